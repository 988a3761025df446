"""A bundled synthetic visual task: images of colored shapes, written in the original LLaVA data formats.

    write_synthetic_task("data/shapes", n_train=2000, n_test=200, seed=0)

Each image shows 1-4 shapes of one color and one kind on a gray background, one per quadrant. Stage-1 data pairs
each image with a caption (`{id, image, caption}`, like CC3M's `metadata.json`); stage-2 data holds multi-turn
conversations about color, shape, count and (for a single shape) whether it is at the top or the bottom
(`{id, image, conversations}`, like instruct-158K). Every
question can only be answered by looking at the image: an image-blind model can only give the most frequent answer
(right 1/5, 1/3, 2/5 and 1/2 of the time).
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 80, 215), "yellow": (225, 205, 30),
          "purple": (140, 55, 185)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three", "four")
SIDES = ("top", "bottom")
BACKGROUND = (128, 128, 128)
QUESTIONS = {
    "color": ("What color are the shapes?", "Which color do you see?"),
    "shape": ("What kind of shape is shown?", "Which shape is in the image?"),
    "count": ("How many shapes are there?", "Count the shapes."),
    "side": ("Is the shape at the top or the bottom?", "Where is the shape, top or bottom?"),
}
COUNT_WEIGHTS = (4, 2, 2, 2)  # two in five images hold a single shape, so "top or bottom?" is asked often enough
# The best an image-blind model can do: always give the most frequent answer.
CHANCE = {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "count": max(COUNT_WEIGHTS) / sum(COUNT_WEIGHTS),
          "side": 1 / len(SIDES)}


@dataclass
class Scene:
    color: str
    shape: str
    count: int
    side: str | None  # only for a single shape

    def answer(self, kind: str) -> str:
        return {"color": self.color, "shape": self.shape, "count": COUNTS[self.count - 1], "side": self.side}[kind]

    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        where = f" at the {self.side}" if self.side else ""
        return f"{COUNTS[self.count - 1].capitalize()} {self.color} {noun}{where}."


def random_scene(rng: random.Random) -> Scene:
    count = rng.choices(range(1, len(COUNTS) + 1), weights=COUNT_WEIGHTS)[0]
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), count, rng.choice(SIDES) if count == 1 else None)


def draw(scene: Scene, rng: random.Random, size: int = 32, blank: bool = False) -> Image.Image:
    """The scene on a `size` x `size` canvas, each shape centred in its quadrant with a pixel of jitter
    (blank=True: background only)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    if blank:
        return image
    pen, half = ImageDraw.Draw(image), size // 2
    extent = int(half * 0.75)
    quadrants = [(0, 0), (half, 0), (0, half), (half, half)]
    if scene.side:
        row = 0 if scene.side == "top" else half
        slots = [(rng.choice((0, half)), row)]
    else:
        slots = rng.sample(quadrants, scene.count)
    for x0, y0 in slots:
        x = x0 + (half - extent) // 2 + rng.randint(-1, 1)
        y = y0 + (half - extent) // 2 + rng.randint(-1, 1)
        box, fill = (x, y, x + extent, y + extent), COLORS[scene.color]
        if scene.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif scene.shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(x + extent / 2, y), (x, y + extent), (x + extent, y + extent)], fill=fill)
    return image


def conversation(scene: Scene, rng: random.Random) -> list[dict]:
    """A question/answer turn for every kind that applies, in random order, `<image>` opening the first."""
    kinds = ["color", "shape", "count"] + (["side"] if scene.side else [])
    turns = []
    for index, kind in enumerate(rng.sample(kinds, len(kinds))):
        question = rng.choice(QUESTIONS[kind])
        turns.append({"from": "human", "value": ("<image>\n" if index == 0 else "") + question})
        turns.append({"from": "gpt", "value": scene.answer(kind).capitalize() + "."})
    return turns


def write_synthetic_task(directory, n_train: int = 2000, n_test: int = 200, seed: int = 0, size: int = 32,
                         blank: bool = False) -> dict[str, Path]:
    """Write images + `stage1.json` (captions), `stage2.json` (conversations) and `test.json` (one question per
    held-out image and kind, with the answer). `blank=True` draws every training image as background only."""
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stage1, stage2, test = [], [], []
    for index in range(n_train + n_test):
        scene, held_out = random_scene(rng), index >= n_train
        name = f"{'test' if held_out else 'train'}_{index:06d}.png"
        draw(scene, rng, size, blank=blank and not held_out).save(root / "images" / name)
        if held_out:
            for kind in ["color", "shape", "count"] + (["side"] if scene.side else []):
                test.append({"id": f"{name}:{kind}", "image": name, "kind": kind,
                             "question": rng.choice(QUESTIONS[kind]), "answer": scene.answer(kind)})
        else:
            stage1.append({"id": name, "image": name, "caption": scene.caption()})
            stage2.append({"id": name, "image": name, "conversations": conversation(scene, rng)})
    paths = {"images": root / "images"}
    for split, rows in (("stage1", stage1), ("stage2", stage2), ("test", test)):
        paths[split] = root / f"{split}.json"
        paths[split].write_text(json.dumps(rows, indent=1))
    return paths


def vocabulary() -> list[str]:
    """Every sentence the task can produce, for training the tiny tokenizer."""
    words = [f"{c.capitalize()}. {s.capitalize()}. {n.capitalize()}." for c in COLORS for s in SHAPES for n in COUNTS]
    captions = [Scene(c, s, n, side).caption() for c in COLORS for s in SHAPES for n in range(1, 5)
                for side in ((SIDES if n == 1 else (None,)))]
    return words + captions + [q for qs in QUESTIONS.values() for q in qs] + ["Top. Bottom."]


__all__ = ["write_synthetic_task", "vocabulary", "CHANCE", "QUESTIONS", "Scene", "draw"]
