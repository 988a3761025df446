"""The serving engine: greedy answers equal `model.generate`, requests arriving together are batched with the answers
they get alone, each row stops on its own, closing a stream stops its generation, and bad requests are named."""

import time

import pytest
from PIL import Image

from transformers_llava.serving import LlavaEngine, RequestError

from serving_helpers import ask, generate_alone, peak

ORANGE, BLUE = Image.new("RGB", (60, 40), "orange"), Image.new("RGB", (40, 50), "blue")


@pytest.fixture
def peaked(tiny):
    model, processor = tiny
    return peak(model), processor


def test_greedy_answer_equals_generate_and_the_stream_adds_up_to_it(peaked):
    model, processor = peaked
    engine = LlavaEngine(model, processor)
    messages = ask("What is this?", ORANGE)
    answer = engine.complete(messages, temperature=0, max_new_tokens=12)
    assert answer == generate_alone(model, processor, messages, 12) and answer
    assert (answer.completion_tokens, answer.finish_reason) == (12, "length")
    assert answer.prompt_tokens == len(engine.encode(messages)[0])
    deltas = list(engine.stream(messages, temperature=0, max_new_tokens=12))
    assert len(deltas) > 1 and "".join(deltas) == answer


def test_requests_arriving_together_share_decoding_steps_answering_as_alone(peaked):
    model, processor = peaked
    conversations = [ask("What is this?", ORANGE), ask("Hello, what color is the sky?"),
                     ask("Describe the image concisely.", BLUE), ask("What is in the image? yes", ORANGE)]
    limits = [10, 6, 8, 3]
    alone = [generate_alone(model, processor, c, n) for c, n in zip(conversations, limits)]
    batch_sizes = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: batch_sizes.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    engine = LlavaEngine(model, processor, batch_window=1.0)
    generations = [engine.submit(c, temperature=0, max_new_tokens=n) for c, n in zip(conversations, limits)]
    answers = [g.result() for g in generations]
    # one left-padded prefill of all four, then shared steps; each row leaves the batch when its answer ends
    assert batch_sizes == [sum(n >= k for n in limits) for k in range(1, max(limits) + 1)]
    assert answers == alone
    assert [a.completion_tokens for a in answers] == limits


def test_a_request_arriving_mid_decode_joins_the_running_batch_answering_as_alone(peaked):
    model, processor = peaked
    first, second = ask("Describe the image concisely.", BLUE), ask("What is this?", ORANGE)
    alone = [generate_alone(model, processor, first, 40), generate_alone(model, processor, second, 8)]
    widths = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    engine = LlavaEngine(model, processor)
    running = engine.submit(first, temperature=0, max_new_tokens=40)
    while running.completion_tokens < 3:
        time.sleep(0.001)
    joining = engine.submit(second, temperature=0, max_new_tokens=8)
    answers = [running.result(), joining.result()]
    assert answers == alone and [a.completion_tokens for a in answers] == [40, 8]
    prefills = [i for i, (rows, length) in enumerate(widths) if length > 1]
    assert len(prefills) == 2 and widths[prefills[1]][0] == 1 and prefills[1] >= 3  # joined after 3 steps alone
    assert [rows for rows, length in widths].count(2) == 7  # then decoded together until its 8th token
    assert len(widths) == 40 + 1  # the running row never waited: 40 tokens, plus the newcomer's prefill


def test_each_row_ends_at_its_own_stop_string(peaked):
    model, processor = peaked
    engine = LlavaEngine(model, processor, batch_window=0.5)
    messages = ask("What is this?", ORANGE)
    full = engine.complete(messages, temperature=0, max_new_tokens=12)
    stop = full.split()[2]
    cut, other = engine.submit(messages, temperature=0, max_new_tokens=12, stop=[stop]), engine.submit(
        messages, temperature=0, max_new_tokens=12)
    cut, other = cut.result(), other.result()
    assert cut == full[: full.index(stop)].strip() and cut.finish_reason == "stop"
    assert other == full and other.finish_reason == "length"


def test_sampling_with_a_seed_repeats_itself(peaked):
    model, processor = peaked
    engine = LlavaEngine(model, processor)
    messages = ask("What is this?", ORANGE)
    first = engine.complete(messages, temperature=5.0, top_p=1.0, max_new_tokens=10, seed=7)
    assert engine.complete(messages, temperature=5.0, top_p=1.0, max_new_tokens=10, seed=7) == first
    others = {engine.complete(messages, temperature=5.0, top_p=1.0, max_new_tokens=10, seed=s) for s in range(4)}
    assert len(others) > 1


def test_rows_with_different_sampling_share_a_batch_each_answering_as_alone(peaked):
    model, processor = peaked
    messages, other = ask("What is this?", ORANGE), ask("Hello, what color is the sky?")
    sampled = dict(temperature=5.0, top_p=0.9, max_new_tokens=10, seed=3)
    engine = LlavaEngine(model, processor, batch_window=0.5)
    sampled_alone = engine.complete(messages, **sampled)
    widths = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    together = [engine.submit(messages, **sampled), engine.submit(other, temperature=0, max_new_tokens=10)]
    together = [g.result() for g in together]
    assert widths == [2] * 10  # one prefill and nine steps, shared by the sampled and the greedy row
    assert together == [sampled_alone, generate_alone(model, processor, other, 10)]


def test_closing_a_stream_stops_its_generation(peaked):
    model, processor = peaked
    steps = []
    model.model.language_model.register_forward_hook(lambda *args: steps.append(1))
    engine = LlavaEngine(model, processor)
    deltas = engine.stream(ask("What is this?", ORANGE), temperature=0, max_new_tokens=1000)
    next(deltas)
    deltas.close()
    after = engine.complete(ask("What is this?", ORANGE), temperature=0, max_new_tokens=2)  # queued behind it
    assert after and len(steps) < 50  # the cancelled row stopped within a few tokens, not after 1000


@pytest.mark.parametrize("messages, options, param, words", [
    ([{"role": "tool", "content": "x"}], {}, "messages[0].role", "role 'tool'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}, "messages[1].role", "last"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}], {}, "messages", "alternate"),
    (ask("What is <image> this?", ORANGE), {}, "messages", "placeholder"),
    (ask("big", Image.new("RGB", (200, 200))), {}, "messages[0].content[0]", "40,000 pixels"),
    ([{"role": "user", "content": [{"type": "image", "image": b"?"}]}], {}, "messages[0].content[0]", "not an image"),
    ([{"role": "user", "content": "red " * 2100}], {}, "messages", "context is 2048"),
    (ask("hi"), {"max_new_tokens": 5000}, "max_tokens", "at most"),
    (ask("hi"), {"temperature": -1}, "temperature", "-1"),
    (ask("hi"), {"top_p": 0}, "top_p", "(0, 1]"),
])
def test_bad_requests_name_the_problem(tiny, messages, options, param, words):
    engine = LlavaEngine(*tiny, max_image_pixels=30_000)
    with pytest.raises(RequestError) as error:
        engine.submit(messages, **options)
    assert error.value.param == param and words in error.value.message


def test_from_pretrained_serves_a_llava_hf_export_as_the_model_itself(peaked, tmp_path):
    from transformers_llava.checkpoints import save_llava_hf

    model, processor = peaked
    exported = save_llava_hf(model, processor, tmp_path / "llava-hf")
    engine = LlavaEngine.from_pretrained(exported, device="cpu")
    messages = ask("What is this?", ORANGE)
    assert engine.complete(messages, temperature=0, max_new_tokens=8) == generate_alone(model, processor, messages, 8)


def test_a_generation_config_the_decode_loop_would_ignore_is_refused(tiny):
    model, processor = tiny
    model.generation_config.repetition_penalty = 1.0  # a no-op: served
    LlavaEngine(model, processor)
    model.generation_config.repetition_penalty = 1.3
    with pytest.raises(ValueError, match="repetition_penalty': 1.3"):
        LlavaEngine(model, processor)
