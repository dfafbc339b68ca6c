"""The same openings, the same seed, every run's best checkpoint: stories side by side.

Every run decodes with one set of sampling settings (the defaults of
:class:`~gpt_study.config.SampleConfig` with compare's flags on top), not each run's own, so the
runs differ only in their weights. Each run reads in its own training window. The prompts are
batched and seeded exactly as :func:`gpt_study.evaluate.evaluate_stories` does (one batch of
32 prompts per seed ``seed + offset``), so with all of ``OPENINGS`` the figures are those of
``gpt-study evaluate --no_valid`` on the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gpt_study.checkpoint import load_for_inference
from gpt_study.compare.runs import RunData
from gpt_study.config import SampleConfig
from gpt_study.errors import UserError
from gpt_study.evaluate import OPENINGS, story_metrics
from gpt_study.generate import describe, generate

BATCH = 32  # prompts per forward pass, as evaluate_stories batches them
DEFAULT_SEED = 1234  # evaluate_stories' seed when none is given


@dataclass
class StorySettings:
    """What compare asks of every run's best checkpoint."""

    openings: int = 4
    samples: int = 2
    seed: int = DEFAULT_SEED
    max_new_tokens: int = 256
    device: str = "auto"

    def sample_config(self) -> SampleConfig:
        return SampleConfig(seed=self.seed, max_new_tokens=self.max_new_tokens)

    def prompts(self) -> list[str]:
        return [p for p in OPENINGS[: self.openings] for _ in range(self.samples)]


def run_stories(run: RunData, settings: StorySettings) -> dict[str, Any]:
    """Stories of ``run``'s best checkpoint, one per prompt, with :func:`story_metrics`."""
    ckpt = load_for_inference(str(run.best_checkpoint), settings.device)
    window = ckpt.config.train.context_size
    sample = settings.sample_config()
    prompts = settings.prompts()
    texts: list[str] = []
    new_ids: list[list[int]] = []
    finished: list[bool] = []
    for b in range(0, len(prompts), BATCH):
        batch = SampleConfig(**{**asdict(sample), "seed": sample.seed + b})
        res = generate(
            ckpt.model, ckpt.tokenizer, prompts[b : b + BATCH], batch, window, warn=_quiet
        )
        texts += res.texts
        new_ids += res.new_ids
        finished += res.finished
    return {
        "run": run.name,
        "checkpoint": str(ckpt.path),
        "step": ckpt.state.get("step"),
        "settings_text": describe(sample, window),
        "metrics": story_metrics(new_ids, finished),
        "texts": texts,
    }


def compare_stories(runs: Sequence[RunData], settings: StorySettings) -> dict[str, Any]:
    """Every run's stories for the same prompts, and a note naming runs without ``best/``."""
    per_run, missing = [], []
    for run in runs:
        try:
            per_run.append(run_stories(run, settings))
        except UserError as e:  # no best/ yet, or a damaged one: the other runs still compare
            missing.append(f"{run.name} ({' '.join(str(e).split())})")
    notes = []
    if missing:
        notes.append(f"no stories from {'; '.join(missing)}")
    return {
        "prompts": settings.prompts(),
        "settings": asdict(settings),
        "runs": per_run,
        "notes": notes,
    }


def _quiet(_: str) -> None:
    """Openings with words outside a small vocabulary still make fair prompts: no warning."""
