"""Typed configuration: one source of truth for every stage.

Each concern is a dataclass whose field names are the study's flag names (``--lr``,
``--sp_weight``, ``--d_model`` ...) and whose defaults are the study's values, so its scripts
still read true. The help text of each flag is the ``doc`` of its field. ``Config`` bundles them;
it is saved as JSON inside every checkpoint and read back by :func:`load_config` only.

This module imports no torch, so ``gpt-study prepare`` and ``--help`` start quickly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from gpt_study.errors import UserError
from gpt_study.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_choices,
    check_ranges,
    doc,
)
from gpt_study.io import write_json_atomic
from gpt_study.model_config import GPTConfig
from gpt_study.train_config import TrainConfig

__all__ = [
    "BYTE_VOCAB",
    "EOT_ID",
    "SOT_ID",
    "SPECIALS",
    "UNK_ID",
    "Config",
    "DataConfig",
    "GPTConfig",
    "SampleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]

SPECIALS = ("<unk>", "<sot>", "<eot>")
"""The study's special tokens, with ids 0, 1, 2 in every vocabulary."""

UNK_ID, SOT_ID, EOT_ID = 0, 1, 2

BYTE_VOCAB = len(SPECIALS) + 256
"""The ``byte`` tokenizer's ids: the specials, then byte ``b`` as ``3 + b``."""


@dataclass
class DataConfig:
    """How a corpus becomes token ids (``gpt-study prepare``); recorded in ``meta.json``."""

    data: list[str] = field(
        default_factory=list,
        metadata=doc(
            "corpus files, folders or globs (.txt with <|endoftext|> lines, .jsonl/.json, "
            ".parquet, .gz of these); none: the Hub dataset roneneldan/TinyStories",
            nargs="+",
        ),
    )
    dataset_root: str = field(
        default="data", metadata=doc("where prepared folders live (the study's flag)")
    )
    tokenizer: str = field(
        default="word",
        metadata=doc(
            "word: the study's spaCy word vocabulary; bpe: byte-level BPE; byte: the 256 UTF-8 "
            "byte values (nothing to learn)",
            choices=["word", "bpe", "byte"],
        ),
    )
    vocab_size: int | None = field(
        default=None,
        metadata=doc(
            "largest vocabulary, specials included (default 30000 for word, 4096 for bpe; byte "
            f"is always {BYTE_VOCAB})"
        ),
    )
    min_freq: int = field(
        default=2, metadata=doc("a word needs this many occurrences to enter the vocabulary")
    )
    min_chars: int = field(
        default=300,
        metadata=doc("drop stories whose raw text (before cleaning, as the study) is shorter"),
    )
    lowercase: bool | None = field(
        default=None,
        metadata=doc("lowercase the text (default: on for word, off for bpe and byte)"),
    )
    out: str | None = field(
        default=None,
        metadata=doc("output folder (default: <dataset_root>/<tokenizer>-<vocab_size>)"),
    )
    force: bool = field(default=False, metadata=doc("redo a finished output folder"))
    workers: int = field(default=0, metadata=doc("processes for tokenization (0: all cores)"))
    valid_fraction: float = field(
        default=0.01,
        metadata=doc(
            "share of train stories held out as the valid split when no valid file is given"
        ),
    )
    bpe_train_chars: int = field(
        default=5_000_000,
        metadata=doc(
            "bpe: train it on at most this many characters from the start of the train split"
        ),
    )

    RANGES: ClassVar[dict[str, Range]] = {
        "vocab_size": Range(4, 65535, why="it does not fit uint16 token ids"),
        "min_freq": AT_LEAST_1,
        "min_chars": NON_NEGATIVE,
        "workers": NON_NEGATIVE,
        "valid_fraction": Range(0, 0.5, lo_open=True),
        "bpe_train_chars": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)
        check_choices(self)
        if self.tokenizer == "byte" and self.vocab_size not in (None, BYTE_VOCAB):
            raise UserError(
                f"--vocab_size {self.vocab_size} with --tokenizer byte: its vocabulary is always "
                f"{BYTE_VOCAB} (256 bytes and 3 specials); drop --vocab_size"
            )
        if self.vocab_size is None:
            self.vocab_size = {"word": 30000, "bpe": 4096, "byte": BYTE_VOCAB}[self.tokenizer]
        if self.lowercase is None:
            self.lowercase = self.tokenizer == "word"

    def output_dir(self) -> Path:
        """The prepared folder: ``--out``, else ``<dataset_root>/<tokenizer>-<vocab_size>``."""
        if self.out:
            return Path(self.out)
        return Path(self.dataset_root) / f"{self.tokenizer}-{self.vocab_size}"


@dataclass
class SampleConfig:
    """Decoding settings (``gpt-study generate`` and the sample story of each epoch)."""

    max_new_tokens: int = field(default=256, metadata=doc("most tokens to generate per story"))
    greedy: bool = field(
        default=False, metadata=doc("the study's greedy decoding (ignores sampling flags)")
    )
    temperature: float = field(default=0.8, metadata=doc("softmax temperature"))
    top_k: int = field(default=0, metadata=doc("sample among the k likeliest tokens (0: off)"))
    top_p: float = field(default=0.95, metadata=doc("nucleus sampling mass (1: off)"))
    repetition_penalty: float = field(
        default=1.1,
        metadata=doc(
            "lower the logits of tokens already in the story (CTRL-style; 1: off); 1.1 with "
            "temperature 0.8 and top_p 0.95 was measured to stop loops (docs/generate.md)"
        ),
    )
    seed: int | None = field(default=None, metadata=doc("seed for reproducible sampling"))

    RANGES: ClassVar[dict[str, Range]] = {
        "max_new_tokens": AT_LEAST_1,
        "top_k": NON_NEGATIVE,
        "top_p": Range(0, 1, lo_open=True),
        "repetition_penalty": POSITIVE,
        "seed": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)
        check_choices(self)
        if self.greedy:
            return  # greedy decoding reads none of the sampling settings
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(
                f"--temperature {self.temperature} is out of range: use a value > 0 "
                "(or --greedy for the study's argmax decoding)"
            )


@dataclass
class Config:
    """Everything that defines a run; saved as ``config.json`` in every checkpoint."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "seed"

    def __post_init__(self) -> None:
        check_choices(self)
        if self.train.context_size > self.model.max_len:
            raise UserError(
                f"--context_size {self.train.context_size} is above --max_len {self.model.max_len}: "
                "raise --max_len or lower --context_size"
            )


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} in {where}: remove them or update gpt-study"
        )
    return cls(**values)


def config_from_dict(d: dict[str, Any], where: str = "config") -> Config:
    """The inverse of :func:`config_to_dict`."""
    parts = {"model": GPTConfig, "train": TrainConfig, "sample": SampleConfig, "data": DataConfig}
    unknown = sorted(set(d) - set(parts) - {"preset"})
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(unknown)} in {where}")
    kw = {k: _from_dict(cls, d.get(k, {}), f"{where} [{k}]") for k, cls in parts.items()}
    return Config(**kw, preset=d.get("preset", "seed"))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def save_config(path: str | os.PathLike, cfg: Config) -> None:
    write_json_atomic(path, config_to_dict(cfg))


def load_config(path: str | os.PathLike) -> Config:
    """The one function that reads a saved config."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no config at {path}: is this a gpt-study checkpoint folder?") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}): the file is damaged"
        ) from None
    train = d.get("train") if isinstance(d, dict) else None
    if isinstance(train, dict):
        # Configs saved before these settings existed decayed only the weight matrices, drew
        # windows at any offset and kept the checkpoint of lowest NLL as best: they keep that.
        train.setdefault("decay_all", False)
        train.setdefault("study_rows", False)
        train.setdefault("best_by", "nll")
    return config_from_dict(d, str(path))
