"""Typed configuration: one source of truth for every stage.

Each concern is a dataclass whose field names are the study's flag names (``--lr``,
``--sp_weight``, ``--d_model`` ...) and whose defaults are the study's values, so its scripts
still read true. The help text of each flag is the ``doc`` of its field. ``Config`` bundles them;
it is saved as JSON inside every checkpoint and read back by :func:`load_config` only.

This module imports no torch, so ``gpt-study prepare`` and ``--help`` start quickly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gpt_study.errors import UserError
from gpt_study.io import write_json_atomic

SPECIALS = ("<unk>", "<sot>", "<eot>")
"""The study's special tokens, with ids 0, 1, 2 in every vocabulary."""

UNK_ID, SOT_ID, EOT_ID = 0, 1, 2


def doc(text: str, **kw: Any) -> dict[str, Any]:
    """Field metadata: ``text`` becomes the flag's ``--help``; ``kw`` are extra argparse options."""
    return {"doc": text, **kw}


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
            "word: the study's spaCy word vocabulary; bpe: byte-level BPE", choices=["word", "bpe"]
        ),
    )
    vocab_size: int | None = field(
        default=None,
        metadata=doc(
            "largest vocabulary, specials included (default 30000 for word, 4096 for bpe)"
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
        default=None, metadata=doc("lowercase the text (default: on for word, off for bpe)")
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

    def __post_init__(self) -> None:
        if not 0 < self.valid_fraction <= 0.5:
            raise UserError("--valid_fraction must be in (0, 0.5]")
        if self.bpe_train_chars < 1 or self.workers < 0:
            raise UserError("--bpe_train_chars must be positive and --workers at least 0")
        if self.tokenizer not in ("word", "bpe"):
            raise UserError(f"unknown tokenizer {self.tokenizer!r}: use --tokenizer word or bpe")
        if self.vocab_size is None:
            self.vocab_size = 30000 if self.tokenizer == "word" else 4096
        if self.lowercase is None:
            self.lowercase = self.tokenizer == "word"
        if not 3 < self.vocab_size <= 65535:
            raise UserError(
                f"--vocab_size {self.vocab_size} does not fit uint16 token ids: use 4..65535"
            )
        if self.min_freq < 1:
            raise UserError("--min_freq must be at least 1")

    def output_dir(self) -> Path:
        """The prepared folder: ``--out``, else ``<dataset_root>/<tokenizer>-<vocab_size>``."""
        if self.out:
            return Path(self.out)
        return Path(self.dataset_root) / f"{self.tokenizer}-{self.vocab_size}"


@dataclass
class GPTConfig:
    """Architecture of the decoder (the study's defaults: 19,672,880 parameters at 30,000 words)."""

    vocab_size: int = field(
        default=30000, metadata=doc("set from the tokenizer when training", cli=False)
    )
    max_len: int = field(default=256, metadata=doc("rows of the learned position table"))
    d_model: int = field(default=256, metadata=doc("width of the residual stream"))
    d_ff: int = field(default=512, metadata=doc("hidden width of the feed-forward layer"))
    n_layers: int = field(default=8, metadata=doc("decoder blocks"))
    n_heads: int = field(default=16, metadata=doc("attention heads (must divide d_model)"))
    attention_drop: float = field(default=0.1, metadata=doc("dropout on attention weights"))
    residual_drop: float = field(default=0.1, metadata=doc("dropout on each residual branch"))
    embedding_drop: float = field(default=0.1, metadata=doc("dropout after the embeddings"))

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise UserError(
                f"--n_heads {self.n_heads} does not divide --d_model {self.d_model}: "
                "pick a head count that divides the width"
            )
        for name in ("vocab_size", "max_len", "d_model", "d_ff", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive")


@dataclass
class TrainConfig:
    """The training run (``gpt-study train``): the study's recipe plus what makes it trustworthy."""

    data: str | None = field(
        default=None,
        metadata=doc(
            "prepared folder (default: <dataset_root>/word-<vocab_size>, as prepare writes it)"
        ),
    )
    save_root: str = field(
        default="runs/gpt", metadata=doc("folder for checkpoints, logs and plots")
    )
    resume: bool = field(
        default=False, metadata=doc("continue the run in --save_root from its last checkpoint")
    )
    label_smoothing: float = field(
        default=0.1, metadata=doc("label smoothing of the training loss")
    )
    sp_weight: float = field(
        default=1.0,
        metadata=doc(
            "class weight of <sot>/<eot> in the loss, as CrossEntropyLoss(weight=...): on those "
            "targets and on their share of every position's smoothing (1: no extra weight)"
        ),
    )
    weight_decay: float = field(default=5e-4, metadata=doc("AdamW weight decay"))
    lr: float = field(default=2.5e-4, metadata=doc("peak learning rate"))
    lr_betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=doc("AdamW betas", nargs=2))
    eps: float = field(default=1e-9, metadata=doc("AdamW epsilon"))
    lr_schedule: str = field(
        default="constant",
        metadata=doc(
            "constant (the study) or cosine (linear warmup, cosine decay)",
            choices=["constant", "cosine"],
        ),
    )
    warmup_steps: int = field(
        default=0, metadata=doc("linear warmup steps for --lr_schedule cosine")
    )
    min_lr: float = field(default=0.0, metadata=doc("final learning rate of the cosine schedule"))
    context_size: int = field(
        default=128,
        metadata=doc("tokens per training row (must be <= max_len); see --study_rows"),
    )
    batch_size: int = field(default=64, metadata=doc("rows per step on each process"))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimizer step"))
    grad_clip: float = field(default=0.0, metadata=doc("clip the gradient norm to this (0: off)"))
    epoch: int = field(default=512, metadata=doc("epochs to train (the study's flag)"))
    iters_per_epoch: int = field(default=1024, metadata=doc("optimizer steps per epoch"))
    eval_iters: int = field(
        default=0, metadata=doc("cap on validation batches (0: the whole valid split)")
    )
    max_steps: int = field(
        default=0, metadata=doc("stop after this many optimizer steps (0: no cap)")
    )
    max_time: float = field(
        default=0.0,
        metadata=doc(
            "stop after this many minutes of this invocation (0: no cap); a resumed run gets a fresh budget"
        ),
    )
    print_interval: int = field(default=100, metadata=doc("steps between console log lines"))
    sample_tokens: int = field(
        default=256,
        metadata=doc("most tokens of the greedy sample story written each epoch (0: none)"),
    )
    device: str = field(default="auto", metadata=doc("auto, cpu, cuda, cuda:N or mps"))
    dtype: str = field(
        default="float32",
        metadata=doc(
            "float32 (the study), auto (bf16 autocast where the hardware computes it natively) "
            "or bfloat16",
            choices=["auto", "float32", "bfloat16"],
        ),
    )
    compile: bool = field(default=False, metadata=doc("torch.compile the model"))
    threads: int = field(
        default=0,
        metadata=doc(
            "CPU threads for torch (0: torch's default, one per core); 1 is faster when other "
            "work shares the cores"
        ),
    )
    seed: int = field(default=1234, metadata=doc("seed for weights, dropout and data order"))
    wb_flag: bool = field(
        default=False, metadata=doc("log to Weights & Biases (needs pip install wandb)")
    )
    wb_project: str = field(default="gpt_study", metadata=doc("wandb project"))
    wb_name: str | None = field(default=None, metadata=doc("wandb run name"))
    wb_notes: str | None = field(default=None, metadata=doc("wandb notes"))
    wb_tags: list[str] = field(default_factory=list, metadata=doc("wandb tags", nargs="*"))
    decay_all: bool = field(
        default=True,
        metadata=doc(
            "AdamW weight decay on every parameter, biases and LayerNorms included (the study); "
            "--no-decay_all decays only weight matrices and embeddings"
        ),
    )
    study_rows: bool = field(
        default=True,
        metadata=doc(
            "training rows as the study drew them: the split cut into rows of --context_size "
            "tokens, inputs the first context_size - 1; --no-study_rows: windows of "
            "context_size + 1 tokens at any offset, context_size inputs"
        ),
    )
    best_by: str = field(
        default="loss",
        metadata=doc(
            "the validation number that picks the best checkpoint: loss (the study's smoothed, "
            "weighted valid loss) or nll",
            choices=["loss", "nll"],
        ),
    )

    def __post_init__(self) -> None:
        self.lr_betas = tuple(self.lr_betas)  # JSON gives a list
        positive = (
            "context_size",
            "batch_size",
            "grad_accum",
            "epoch",
            "iters_per_epoch",
            "print_interval",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        if not 0 <= self.label_smoothing < 1:
            raise UserError("--label_smoothing must be in [0, 1)")
        if self.sp_weight <= 0:
            raise UserError("--sp_weight must be positive")
        if self.best_by not in ("loss", "nll"):
            raise UserError(f"unknown --best_by {self.best_by!r}: use loss or nll")
        if self.study_rows and self.context_size < 2:
            raise UserError("--context_size must be at least 2 with --study_rows")

    @property
    def window(self) -> int:
        """Input positions of a training row, the window the model learns: ``context_size - 1``
        with ``study_rows`` (the study's 128-token rows gave 127 inputs), else ``context_size``.
        Validation and generation keep to it."""
        return self.context_size - 1 if self.study_rows else self.context_size


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
            "temperature 0.8 and top_p 0.95 was measured to stop loops (README)"
        ),
    )
    seed: int | None = field(default=None, metadata=doc("seed for reproducible sampling"))

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UserError("--temperature must be positive (use --greedy for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise UserError("--top_p must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1 or self.repetition_penalty <= 0:
            raise UserError("--top_k must be >= 0, --max_new_tokens >= 1, --repetition_penalty > 0")


@dataclass
class Config:
    """Everything that defines a run; saved as ``config.json`` in every checkpoint."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "seed"

    def __post_init__(self) -> None:
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
