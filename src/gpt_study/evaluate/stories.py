"""The story protocol: what "the story metrics of a model" means, defined once.

``gpt-study evaluate``, ``gpt-study compare`` (and the study page, which shows compare's
output) and ``benchmarks/bench_quality.py`` all write their stories with :func:`write_stories`
under a :class:`StoryProtocol` and measure them with :func:`story_metrics`, so one model has one
``<eot>`` share. Before, evaluate capped stories at the sampling default of 256 new tokens and
the benchmark at 512, and the same model scored 87.5% and 97-100%.

The metrics: the share of stories that end with ``<eot>`` (with its standard error and a Wilson
95% interval: 32 stories pin a share down to about six points either way), their mean length,
distinct-1/2 (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
Models") and the share of repeated 4-grams, which catches the loops the study's greedy decoding
fell into.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch

from gpt_study.config import SampleConfig
from gpt_study.config.fields import AT_LEAST_1, NON_NEGATIVE, Range, check_ranges
from gpt_study.generate import describe, generate

OPENINGS = (
    "Once upon a time, there was a little girl named Lily.",
    "One day, a boy named Tom went to the park with his mom.",
    "Once upon a time, in a big forest, there lived a small bunny.",
    "Sam had a red ball. He loved to play with it every day.",
    "There was a big, friendly dog named Max.",
    "One sunny morning, Mia found a shiny rock in the garden.",
    "Tim and his sister wanted to build a tall tower.",
    "Once upon a time, there was a kind old man who lived in a small house.",
    "The little bird could not fly yet.",
    "Anna was sad because it was raining outside.",
    "Ben saw a big box in the kitchen.",
    "Once upon a time, there was a cat who liked to climb trees.",
    "Lucy and her friend went to the beach.",
    "A little fish lived in a blue pond.",
    "One day, a girl named Sue found a key.",
    "",
)
"""The fixed story openings (the last one: no prompt, just ``<sot>``)."""

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class StoryProtocol:
    """Which stories are written for the story metrics, and how they are seeded.

    ``max_new_tokens`` is 512, not the sampling default of 256: only 92% of the real valid
    stories (bpe) end within 256 tokens but 99% within 512, so at 256 a model that writes stories
    as long as real ones "fails" to end one in twelve, while a story cut at 512 has failed to
    end. The prompts (each opening ``samples_per_opening`` times) are generated in batches of
    ``batch_size``; prompt ``i`` draws from its own generator seeded ``seed + i``, whatever its
    batch (:meth:`batches`), on gpt-study's decoders and a transformers model's alike, so the
    stories do not depend on the machine, only on the protocol and the decoding settings.
    """

    openings: tuple[str, ...] = OPENINGS
    samples_per_opening: int = 2
    max_new_tokens: int = 512
    seed: int = 1234
    batch_size: int = 32

    RANGES: ClassVar[dict[str, Range]] = {
        "samples_per_opening": AT_LEAST_1,
        "max_new_tokens": AT_LEAST_1,
        "seed": NON_NEGATIVE,
        "batch_size": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES, {"samples_per_opening": "samples"})  # evaluate's flag

    def prompts(self) -> list[str]:
        return [p for p in self.openings for _ in range(self.samples_per_opening)]

    def batches(self) -> list[tuple[int, list[str]]]:
        """``(first, prompts)`` per batch: the index of its first prompt, whose seed
        :meth:`SampleConfig.from_row <gpt_study.config.SampleConfig.from_row>` gives."""
        ps = self.prompts()
        return [(i, ps[i : i + self.batch_size]) for i in range(0, len(ps), self.batch_size)]

    def decoding(self, sample: SampleConfig | None = None) -> SampleConfig:
        """What every writer of the protocol's stories (gpt-study's and a transformers model's)
        decodes with: :data:`PROTOCOL_SAMPLE`, or ``sample``'s settings where a user departs
        from them, with this protocol's cap and seed."""
        sample = PROTOCOL_SAMPLE if sample is None else sample
        return replace(sample, max_new_tokens=self.max_new_tokens, seed=self.seed)

    def overridden(self, **values: Any) -> StoryProtocol:
        """This protocol with the values that are not ``None`` in place (a user's flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def departures(self, sample: SampleConfig | None = None) -> list[str]:
        """How this protocol, and ``sample``'s decoding if given, differ from the standard ones,
        one phrase each (empty: it is the story protocol)."""
        std = STORY_PROTOCOL
        out = []
        for f in fields(SampleConfig):  # the cap and the seed are the protocol's own, below
            mine, theirs = (
                getattr(sample or PROTOCOL_SAMPLE, f.name),
                getattr(PROTOCOL_SAMPLE, f.name),
            )
            if f.name not in ("max_new_tokens", "seed") and mine != theirs:
                out.append(f"{f.name} {mine} (protocol: {theirs})")
        if self.openings != std.openings:
            same = self.openings == std.openings[: len(self.openings)]
            out.append(f"{len(self.openings)} {'of the' if same else 'other'} openings")
        for f in fields(self):
            if f.name != "openings" and getattr(self, f.name) != getattr(std, f.name):
                out.append(f"{f.name} {getattr(self, f.name)} (protocol: {getattr(std, f.name)})")
        return out

    def as_dict(self) -> dict[str, Any]:
        """The settings for a JSON report: the openings counted, not repeated."""
        return {**asdict(self), "openings": len(self.openings)}


PROTOCOL_SAMPLE = SampleConfig()
"""The protocol's decoding: gpt-study's sampling defaults (temperature 0.8, top_p 0.95, CTRL
penalty 1.1), whatever a checkpoint's own config says, so that one model has one ``<eot>`` share
in every command."""

STORY_PROTOCOL = StoryProtocol()
"""The story metrics of a model: 16 openings, 2 stories each, up to 512 new tokens, seed 1234."""


@dataclass
class Stories:
    """What :func:`write_stories` (or a transformers model's writer) wrote, and the settings line
    to print beside its metrics. A story is its new tokens before its end marker, on every path;
    ``finished`` says which ended with it."""

    texts: list[str]
    new_ids: list[list[int]]
    finished: list[bool]
    sample: SampleConfig
    settings_text: str


def write_stories(
    model: torch.nn.Module,
    tokenizer: Any,
    sample: SampleConfig | None,
    window: int,
    protocol: StoryProtocol = STORY_PROTOCOL,
) -> Stories:
    """The protocol's stories from ``model``, decoded as :meth:`StoryProtocol.decoding` says.

    ``sample`` (None: the protocol's own) gives the decoding (temperature, top_p, ...); its
    ``max_new_tokens`` and ``seed`` are replaced by the protocol's, which a caller changes by
    passing another protocol. The settings line names whatever departs from the standard ones.
    """
    sample = protocol.decoding(sample)
    texts: list[str] = []
    new_ids: list[list[int]] = []
    finished: list[bool] = []
    for first, prompts in protocol.batches():
        res = generate(model, tokenizer, prompts, sample.from_row(first), window, warn=_quiet)
        texts += res.texts
        new_ids += [
            ids[:-1] if done else ids for ids, done in zip(res.new_ids, res.finished, strict=True)
        ]
        finished += res.finished
    return Stories(texts, new_ids, finished, sample, settings_line(sample, window, protocol))


def settings_line(sample: SampleConfig, window: int, protocol: StoryProtocol) -> str:
    """The decoding settings and whether they are the story protocol's: the line printed beside
    the story metrics of a checkpoint and of a transformers model alike."""
    away = protocol.departures(sample)
    note = f"not the story protocol: {', '.join(away)}" if away else "the story protocol"
    return f"{describe(sample, window)}; {note}"


def _quiet(_: str) -> None:
    """Openings with words outside a small vocabulary still make fair prompts: no warning."""


# ------------------------------------------------------------------------ metrics


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` (Wilson 1927): unlike share ±
    z standard errors it stays inside [0, 1] and is not zero-width at 0% or 100%."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def standard_error(p: float, n: int) -> float:
    """Standard error of a share ``p`` of ``n`` stories (binomial): 0 without stories."""
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def share_text(metrics: dict[str, Any], key: str = "eot_share") -> str:
    """``97% ± 6 (95% CI 84-99%)``: the share, 1.96 standard errors in points, and the Wilson
    interval; computed from the share and the story count, so older reports print alike."""
    p, n = metrics[key], int(metrics["stories"])
    lo, hi = wilson_interval(p * n, n)
    half = Z95 * standard_error(p, n) if n else float("nan")
    return f"{p:.0%} ± {half * 100:.0f} (95% CI {lo * 100:.0f}-{hi:.0%})"


def story_metrics(stories: Sequence[Sequence[int]], finished: Sequence[bool]) -> dict[str, Any]:
    """Measurements of stories' token ids (:class:`Stories`: the tokens before the end marker),
    one list per story, and whether each ended by itself.

    * ``eot_share``: stories that ended with ``<eot>`` before the token limit;
      ``eot_share_se`` its standard error and ``eot_share_ci`` its Wilson 95% interval.
    * ``mean_length``: generated tokens per story.
    * ``distinct_1`` / ``distinct_2``: distinct n-grams / all n-grams, pooled over the stories.
    * ``repeated_4gram``: 4-grams that already occurred earlier in the same story, over all
      4-grams: 0 for a story that never repeats itself, near 1 for a loop.
    """
    n = len(stories)
    share = sum(finished) / max(n, 1)
    out: dict[str, Any] = {
        "stories": n,
        "eot_share": share,
        "eot_share_se": standard_error(share, n),
        "eot_share_ci": list(wilson_interval(sum(finished), n)),
        "mean_length": sum(map(len, stories)) / max(n, 1),
    }
    for k in (1, 2):
        grams = [g for b in stories for g in ngrams(b, k)]
        out[f"distinct_{k}"] = len(set(grams)) / len(grams) if grams else 0.0
    repeated = total = 0
    for b in stories:
        grams = ngrams(b, 4)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    out["repeated_4gram"] = repeated / total if total else 0.0
    return out
