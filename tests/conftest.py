"""Shared fixtures: tiny LLaVAs built in-process (CPU, no network) and the shared reference folder."""

import os

# Before anything imports huggingface_hub, which reads these once: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import transformers_llava  # noqa: E402,F401  (registers the Auto classes)
from transformers_llava.demo.tiny import build_tiny_llava  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def reference_path(*parts: str) -> Path:
    """A file under ../shared/reference, or skip the test saying what is missing — in CI (`CI=true`), fail: a run
    that quietly skipped every comparison with the original would pass without checking it."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        message = f"reference data not available: {path} (the shared/ folder beside the checkout)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny LLaVA (linear projector, llava_v1 template) with its processor."""
    root = tmp_path_factory.mktemp("tiny_llava")
    torch.manual_seed(0)
    model, processor = build_tiny_llava(root / "towers")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def tiny(tiny_dir):
    """A fresh (model, processor) loaded from the saved tiny LLaVA."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_dir)
