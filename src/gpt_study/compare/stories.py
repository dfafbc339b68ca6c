"""The same openings, the same seed, every run's best checkpoint: stories side by side.

Every run decodes with the protocol's sampling settings
(:data:`~gpt_study.evaluate.stories.PROTOCOL_SAMPLE`), not each run's own, so the runs differ only
in their weights. Each run reads in its own training window. The stories are those of the story protocol
(:mod:`gpt_study.evaluate.stories`) with compare's flags on top: with ``--openings 16`` and the other
flags at their defaults, the figures are those of ``gpt-study evaluate --no_valid`` on the same
checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from gpt_study.checkpoint import load_for_inference
from gpt_study.compare.runs import RunData
from gpt_study.evaluate.stories import STORY_PROTOCOL, StoryProtocol, story_metrics, write_stories
from gpt_study.runtime.errors import UserError


@dataclass
class StorySettings:
    """What compare asks of every run's best checkpoint: the story protocol, with the first
    ``openings`` openings only (fewer stories: a quicker look)."""

    openings: int = 4
    samples: int = STORY_PROTOCOL.samples_per_opening
    seed: int = STORY_PROTOCOL.seed
    max_new_tokens: int = STORY_PROTOCOL.max_new_tokens
    device: str = "auto"
    dtype: str = "auto"  # the weights' dtype, as evaluate's --dtype

    def __post_init__(self) -> None:
        n = len(STORY_PROTOCOL.openings)
        if not 1 <= self.openings <= n:
            raise UserError(f"--openings {self.openings} is out of range: use 1 to {n}")

    def protocol(self) -> StoryProtocol:
        return replace(
            STORY_PROTOCOL,
            openings=STORY_PROTOCOL.openings[: self.openings],
            samples_per_opening=self.samples,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def prompts(self) -> list[str]:
        return self.protocol().prompts()


def run_stories(run: RunData, settings: StorySettings) -> dict[str, Any]:
    """Stories of ``run``'s best checkpoint, one per prompt, with :func:`story_metrics`."""
    ckpt = load_for_inference(str(run.best_checkpoint), settings.device, settings.dtype)
    window = ckpt.window
    written = write_stories(ckpt.model, ckpt.tokenizer, None, window, settings.protocol())
    return {
        "run": run.name,
        "checkpoint": str(ckpt.path),
        "step": ckpt.state.get("step"),
        "settings_text": written.settings_text,
        "metrics": story_metrics(written.new_ids, written.finished),
        "texts": written.texts,
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
