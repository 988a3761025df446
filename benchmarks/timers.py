"""Where a training step's time goes, and what each batch held: a `TrainerCallback` plus hooks, no library patches.

    timer = StepTimer(trainer.model)
    trainer.add_callback(timer)
    trainer.data_collator = TimedCollator(trainer.data_collator, timer)
    trainer.train()
    timer.phases(first=1)      # mean seconds per step of each phase, skipping the warm-up step

Each step is cut at timestamps taken by trainer callbacks (step begin/end, around `optimizer.step()`), forward hooks
on the vision tower and the LLM, and gradient hooks on the LLM's output (its backward starts: the LM head and loss
are done) and input embeddings (its backward ends). The hooks see the same module names in both stacks, and they
work for any LM head, including TRL's fused one that never calls `lm_head` as a module.

Phases, in step order (a step starts when the previous one ends):
- data: fetching and collating the batch, plus the previous step's logging;
- forward start: from the step's start to the vision tower (moving inputs, the token embeddings);
- vision: the vision tower's forward (frozen: no backward);
- projector+embed: the projector, token embeddings and image-feature splice (the time between vision and LLM);
- llm forward / llm backward: the language model's layers;
- head+loss: the LM head and loss, forward and backward, from the LLM's output to the gradient reaching it;
- backward rest + clip: the gradient through projector and embeddings, and gradient-norm clipping;
- optimizer: `optimizer.step()`, the scheduler and `zero_grad`.
"""

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import TrainerCallback

PHASES = {  # phase -> (start event, end event)
    "data": ("previous_step_end", "step_begin"),
    "forward start": ("step_begin", "vision_start"),
    "vision": ("vision_start", "vision_end"),
    "projector+embed": ("vision_end", "llm_start"),
    "llm forward": ("llm_start", "llm_end"),
    "head+loss": ("llm_end", "llm_backward_start"),
    "llm backward": ("llm_backward_start", "llm_backward_end"),
    "backward rest + clip": ("llm_backward_end", "optimizer_start"),
    "optimizer": ("optimizer_start", "step_end"),
}


@dataclass
class BatchStats:
    ids: list[str]
    lengths: list[int]  # tokens of each sample, image tokens included, padding excluded
    checksums: list[int]  # CRC32 of each sample's input_ids and labels: stacks must train on identical samples
    padded_tokens: int  # positions the LLM runs on (input_ids.numel())
    supervised: int  # positions whose next token carries a loss
    images: int
    collate_seconds: float


def batch_stats(examples: list[dict], batch: dict, seconds: float) -> BatchStats:
    ids, labels = batch["input_ids"], batch["labels"]
    if "attention_mask" in batch:  # rows padded on the right
        lengths = batch["attention_mask"].sum(1).tolist()
        samples = [(ids[i, :n], labels[i, :n]) for i, n in enumerate(lengths)]
    else:  # one packed row: samples start where positions restart at 0
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        lengths = np.diff(starts).tolist()
        samples = [(ids[0, a:b], labels[0, a:b]) for a, b in zip(starts, starts[1:])]
    return BatchStats(
        ids=[example.get("id", "?") for example in examples], lengths=[int(n) for n in lengths],
        checksums=[zlib.crc32(torch.cat(sample).numpy().tobytes()) for sample in samples],
        padded_tokens=batch["input_ids"].numel(), supervised=int((batch["labels"][:, 1:] != -100).sum()),
        images=len(batch["pixel_values"]) if "pixel_values" in batch else 0, collate_seconds=seconds,
    )


class TimedCollator:
    """Wraps a data collator: times each call and records `BatchStats` on the timer, in batch order."""

    def __init__(self, collator, timer: "StepTimer"):
        self.collator, self.timer = collator, timer

    def __call__(self, examples):
        start = time.perf_counter()
        batch = self.collator(examples)
        self.timer.batches.append(batch_stats(examples, batch, time.perf_counter() - start))
        return batch


@dataclass
class StepTimer(TrainerCallback):
    model: torch.nn.Module
    synchronize: bool = False  # on a GPU: wait for the device at every mark, so phases hold their own kernels
    steps: list[dict] = field(default_factory=list)
    batches: list[BatchStats] = field(default_factory=list)
    current: dict = field(default_factory=dict)

    def __post_init__(self):
        base = self.model.model
        base.vision_tower.register_forward_pre_hook(lambda *_: self.mark("vision_start"))
        base.vision_tower.register_forward_hook(lambda *_: self.mark("vision_end"))
        base.language_model.register_forward_pre_hook(self._llm_start, with_kwargs=True)
        base.language_model.register_forward_hook(self._llm_end)

    def mark(self, event: str) -> None:
        if self.synchronize and event not in self.current:
            torch.cuda.synchronize()
        self.current.setdefault(event, time.perf_counter())

    def _llm_start(self, module, args, kwargs):
        self.mark("llm_start")
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.requires_grad:
            embeds.register_hook(lambda grad: self.mark("llm_backward_end"))

    def _llm_end(self, module, args, output):
        self.mark("llm_end")
        hidden = output.last_hidden_state
        if hidden.requires_grad:
            hidden.register_hook(lambda grad: self.mark("llm_backward_start"))

    def on_step_begin(self, args, state, control, **kwargs):
        previous = self.steps[-1]["step_end"] if self.steps else self.started
        self.current = {"previous_step_end": previous}
        self.mark("step_begin")

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.cpu_marks = [time.process_time()]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.mark("optimizer_start")

    def on_step_end(self, args, state, control, **kwargs):
        self.mark("step_end")
        self.cpu_marks.append(time.process_time())
        self.steps.append(self.current)

    def step_cpu_seconds(self) -> list[float]:
        """CPU time of this process per step (all its threads): on a machine shared with other work, the work done
        rather than the wall time it took, which waits for busy cores."""
        return list(np.diff(self.cpu_marks))

    def step_seconds(self) -> list[float]:
        return [step["step_end"] - step["previous_step_end"] for step in self.steps]

    def phases(self, first: int) -> dict[str, float]:
        """Mean seconds per step of each phase over steps `first..` (0-based); `collate` is part of `data`."""
        steps = self.steps[first:]
        means = {name: float(np.mean([s[end] - s[start] for s in steps])) for name, (start, end) in PHASES.items()}
        means["collate"] = float(np.mean([b.collate_seconds for b in self.batches[first:len(self.steps)]]))
        means["total"] = float(np.mean(self.step_seconds()[first:]))
        return means
