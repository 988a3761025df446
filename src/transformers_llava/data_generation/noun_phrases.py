"""Noun-phrase extractors for CC3M filtering, behind one small interface: a batch of captions in, one list of
distinct normalised noun phrases per caption out.

    extractor = get_extractor("auto")          # spaCy noun chunks when an English pipeline is installed, else "simple"
    extractor(["A man rides a red bicycle."])  # [["man", "red bicycle"]]

Phrases are lower-cased without their leading determiners or possessive pronouns ("his owner" -> "owner", "a red
bicycle" -> "red bicycle"), so "a man" and "the man" count as one concept; bare pronouns ("it") are dropped.

spaCy (the paper's choice) needs `pip install spacy` plus an English pipeline package (e.g. `python -m spacy
download en_core_web_sm`); any installed English pipeline is found. Without one, `SimpleNounPhrases` stands in:
it cuts captions at stop words (articles, prepositions, pronouns, auxiliaries, frequent caption verbs) and keeps the
word runs between them. It is an approximation without part-of-speech tags (an unlisted verb stays glued to its
neighbours), so its statistics differ from the paper's; it keeps the pipeline runnable and testable anywhere.
"""

import logging
import re
from collections.abc import Callable

logger = logging.getLogger(__name__)

NounPhraseExtractor = Callable[[list[str]], list[list[str]]]  # also has a `.name` for caching and reports

PREFERRED_SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")

STOP_WORDS = frozenset("""
a an the this that these those some any each every no all both either neither another other such
my your his her its our their mine yours hers ours theirs
i me you he him she it we us they them who whom whose which what where when why how there here
is are was were be been being am do does did has have had having can could will would shall should may might must
of in on at to from by with without for into onto over under above below behind between among across through
near beside besides around along against during before after until while about up down out off inside outside
upon toward towards via per than as like
and or but nor so yet if then because though although
not very too also just only even still more most less least much many few several
one two three four five six seven eight nine ten
sits sitting sit stands standing stand holding holds hold looking looks look walking walks walk riding rides ride
playing plays play wearing wears wear lying lays laying lies eating eats eat flying flies fly running runs run
getting gets get going goes go making makes make taking takes take using uses use showing shows show
parked filled covered made seen shown topped
""".split())
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def clean_phrase(words: list[str]) -> str:
    return " ".join(words).strip()


def distinct(phrases) -> list[str]:
    """Phrases in first-seen order, each once, empties dropped (a caption counts once per phrase)."""
    return list(dict.fromkeys(phrase for phrase in phrases if phrase))


class SimpleNounPhrases:
    """The fallback extractor: runs of non-stop words (see the module docstring for what it gets wrong)."""

    name = "simple"

    def __call__(self, texts: list[str]) -> list[list[str]]:
        return [distinct(self._phrases(text)) for text in texts]

    @staticmethod
    def _phrases(text: str) -> list[str]:
        phrases, run = [], []
        for segment in re.split(r"[.,;:!?()\[\]\"/]+", text.lower()):
            for word in WORD.findall(segment):
                if word in STOP_WORDS or word.isdigit():
                    phrases.append(clean_phrase(run))
                    run = []
                else:
                    run.append(word)
            phrases.append(clean_phrase(run))
            run = []
        return phrases


def find_english_pipeline() -> str | None:
    """The name of an installed spaCy English pipeline (preferring the small one), or None."""
    try:
        import spacy
    except ImportError:
        return None
    installed = spacy.util.get_installed_models()
    for name in PREFERRED_SPACY_PIPELINES:
        if name in installed:
            return name
    english = sorted(name for name in installed if name.startswith("en_"))
    return english[0] if english else None


class SpacyNounChunks:
    """spaCy's `doc.noun_chunks` (the paper's extractor), normalised; `pipeline` defaults to an installed English
    one. The named-entity recogniser and lemmatiser are not loaded: noun chunks need only the tagger and parser."""

    def __init__(self, pipeline: str | None = None, batch_size: int = 256):
        import spacy

        pipeline = pipeline or find_english_pipeline()
        if pipeline is None:
            raise RuntimeError("no spaCy English pipeline is installed (python -m spacy download en_core_web_sm)")
        self.nlp = spacy.load(pipeline, exclude=["ner", "lemmatizer"])
        self.batch_size = batch_size
        self.name = f"spacy:{pipeline}-{self.nlp.meta.get('version', '?')}"

    def __call__(self, texts: list[str]) -> list[list[str]]:
        return [distinct(self._normalise(chunk) for chunk in doc.noun_chunks)
                for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]

    @staticmethod
    def _normalise(chunk) -> str:
        start = 0
        while start < len(chunk) and (chunk[start].pos_ in ("DET", "PRON") or chunk[start].tag_ == "PRP$"
                                      or chunk[start].is_punct):
            start += 1
        return clean_phrase([token.lower_ for token in chunk[start:]])


def get_extractor(name: str = "auto", spacy_pipeline: str | None = None) -> NounPhraseExtractor:
    """"spacy", "simple", or "auto" (spaCy when an English pipeline is installed, else "simple", with a warning)."""
    if name == "simple":
        return SimpleNounPhrases()
    if name == "spacy" or (name == "auto" and (spacy_pipeline or find_english_pipeline())):
        return SpacyNounChunks(spacy_pipeline)
    if name == "auto":
        logger.warning("no spaCy English pipeline installed; using the simple stop-word noun-phrase extractor "
                       "(pip install 'transformers-llava[cc3m]' and an English pipeline for the paper's spaCy one)")
        return SimpleNounPhrases()
    raise ValueError(f"unknown noun-phrase extractor {name!r}; choose auto, spacy or simple")
