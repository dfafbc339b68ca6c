"""The corpus settings (``gpt-study prepare``, recorded in a prepared folder's ``meta.json``) and the
special tokens every vocabulary begins with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gpt_study.config.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    Range,
    check_choices,
    check_ranges,
    doc,
)
from gpt_study.runtime.errors import UserError

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
            "byte values (nothing to learn); hf: a published model's own (gpt-study import), "
            "taken with --tokenizer_from",
            choices=["word", "bpe", "byte", "hf"],
        ),
    )
    tokenizer_from: str | None = field(
        default=None,
        metadata=doc(
            "a checkpoint (or prepared folder) whose tokenizer encodes the corpus, nothing "
            "learned: the folder then feeds train --init_from that checkpoint (its kind, size "
            "and lowercasing are the checkpoint's)"
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
        if self.tokenizer == "bpe" and self.vocab_size is not None and self.vocab_size < BYTE_VOCAB:
            raise UserError(
                f"--vocab_size {self.vocab_size} with --tokenizer bpe: a byte-level BPE holds at "
                f"least its 256 bytes and 3 specials; use --vocab_size {BYTE_VOCAB} or more"
            )
        if self.tokenizer_from:
            return  # its kind, size and lowercasing are the tokenizer's: prepare reads them there
        if self.vocab_size is None:  # hf: none to default to (its tokenizer is a checkpoint's)
            self.vocab_size = {"word": 30000, "bpe": 4096, "byte": BYTE_VOCAB}.get(self.tokenizer)
        if self.lowercase is None:
            self.lowercase = self.tokenizer == "word"

    def output_dir(self) -> Path:
        """The prepared folder: ``--out``, else ``<dataset_root>/<tokenizer>-<vocab_size>``."""
        if self.out:
            return Path(self.out)
        return Path(self.dataset_root) / f"{self.tokenizer}-{self.vocab_size}"


def data_folder(data: str | None, data_settings: dict[str, Any]) -> Path:
    """``--data``, else ``<dataset_root>/<tokenizer>-<vocab_size>`` as ``prepare`` names it."""
    if data:
        return Path(data)
    return DataConfig(**data_settings).output_dir()
