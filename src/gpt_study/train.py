"""``gpt-study train``: the study's recipe, made resumable, observable and fast.

The pieces, top to bottom:

* :func:`fit` builds the run (config, data, model, optimizer, logging), then loops over
  optimizer steps. Every ``--iters_per_epoch`` steps (an "epoch", as in the study) it validates,
  writes one sample story, saves the checkpoints ``last`` and ``best`` and redraws the plot.
* :func:`validate` reports the study's loss (smoothed, weighted) *and* the plain negative
  log-likelihood per token, its perplexity and bits per byte.
* :func:`lr_at` is the learning-rate schedule, a pure function of the step.

Exact resume. A checkpoint holds the weights, the optimizer state, the step and the random-number
states of every process. Training rows are a pure function of ``(seed, step)``
(:class:`~gpt_study.data.dataset.RowSampler`) and the learning rate a pure function of the step,
so the data position and the schedule need no state of their own. Validation and the sample story
run inside :func:`torch.random.fork_rng`, so they never move the generator that drives dropout.
A run stopped and resumed therefore reaches bit-identical weights to one that never stopped (on
the same device, dtype and thread count; ``tests/test_train.py`` checks it).

Many processes. Under ``torchrun`` each process takes its slice of every step's rows, the model
is wrapped in DistributedDataParallel (gradients are averaged only on the micro-step that steps
the optimizer: ``no_sync`` on the others), validation is sharded and summed, and only rank 0
logs, samples, plots and writes; the others wait at a barrier. Ranks agree each step on whether
to stop (a signal, the time budget or a non-finite loss on any rank), so none is left waiting.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gpt_study import distributed as dist
from gpt_study.checkpoint import load_checkpoint, save_checkpoint
from gpt_study.config import (
    EOT_ID,
    PRESETS,
    SOT_ID,
    Config,
    DataConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from gpt_study.data.dataset import (
    PreparedData,
    RowSampler,
    eval_windows,
    iter_eval_batches,
    open_prepared,
)
from gpt_study.errors import UserError
from gpt_study.loss import LMLoss, lm_loss, nll_sum
from gpt_study.model import GPT
from gpt_study.runtime import (
    allow_bf16_attention_math,
    autocast,
    resolve_device,
    resolve_dtype,
    reuse_freed_memory,
    to_device,
)

log = logging.getLogger("gpt_study.train")

# DataConfig flags that train accepts: the study's, to find the default prepared folder.
DATA_FLAGS = ("dataset_root", "min_freq", "vocab_size", "tokenizer")
DATA_SKIP = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in DATA_FLAGS)

# Train settings that may change on --resume without changing what the run computes.
RESUME_FREE = {
    "data",
    "save_root",
    "resume",
    "epoch",
    "max_steps",
    "max_time",
    "eval_iters",
    "print_interval",
    "device",
    "compile",
    "batch_size",  # checked below as the global batch, which may be split differently
    "grad_accum",
    "threads",
    "wb_flag",
    "wb_project",
    "wb_name",
    "wb_notes",
    "wb_tags",
}

LAST, BEST = "last", "best"
METRICS_JSONL, METRICS_CSV, INFO_LOG, PLOT = "metrics.jsonl", "metrics.csv", "info.log", "loss.png"
CSV_COLUMNS = (
    "kind",
    "step",
    "epoch",
    "tokens",
    "train_loss",
    "valid_loss",
    "valid_nll",
    "valid_ppl",
    "valid_bpb",
    "lr",
    "tokens_per_s",
    "elapsed_s",
)


# ---------------------------------------------------------------------------- small pure parts


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    ``constant`` (the study): ``--lr`` throughout, after an optional linear warmup.
    ``cosine``: linear warmup over ``--warmup_steps``, then a cosine from ``--lr`` down to
    ``--min_lr`` at the last step of ``--epoch x --iters_per_epoch`` (budgets such as
    ``--max_steps`` cut the run short but do not reshape the schedule, so a resumed run follows
    the same curve).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.epoch * cfg.iters_per_epoch
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW with the study's settings; decay only on weight matrices and embeddings.

    Biases and LayerNorm gains are left undecayed (decaying a gain toward 0 only fights the
    normalisation); at the study's 5e-4 the difference is small. Fused kernels where available.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kw = dict(lr=cfg.lr, betas=tuple(cfg.lr_betas), eps=cfg.eps)
    if device.split(":")[0] in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, **kw)


# ---------------------------------------------------------------------------- validation


@dataclass
class Validation:
    """Validation numbers; ``loss`` is the study's (smoothed, weighted), the rest are plain NLL."""

    loss: float
    nll: float
    ppl: float
    bpb: float | None
    tokens: int
    fraction: float  # share of the split's targets that were scored

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid_loss": self.loss,
            "valid_nll": self.nll,
            "valid_ppl": self.ppl,
            "valid_bpb": self.bpb,
            "valid_tokens": self.tokens,
            "valid_fraction": self.fraction,
        }


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    data: PreparedData,
    context_size: int,
    batch_size: int,
    label_smoothing: float,
    sp_weight: float,
    eval_iters: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Validation:
    """Score the valid split (sharded over ranks under torchrun; every rank must call it).

    What is computed, exactly:

    * the split is cut into windows of ``context_size + 1`` tokens overlapping by one
      (:func:`~gpt_study.data.dataset.eval_windows`), so each target token is scored once, with
      between 1 and ``context_size`` tokens of context (as in training); ``--eval_iters N`` keeps
      ``N x batch_size`` windows spread evenly over the split;
    * ``loss``: the study's training loss (label smoothing, ``sp_weight``) averaged over targets
      with their weights - what the study called "valid loss";
    * ``nll``: plain cross-entropy, nats per token, every target counted once (``<eot>`` and
      ``<sot>`` included: ending a story is part of the text); ``ppl = exp(nll)``;
    * ``bpb``: total NLL in bits over the UTF-8 bytes of the text those targets encode. The byte
      count comes from ``meta.json`` (``splits.valid.bytes``, the prepared text); when only a
      share of the targets is scored, the bytes are taken in the same share (bytes x scored
      targets / all targets). With the word tokenizer, ``<unk>`` hides the spelling of rare
      words, so bpb is a little optimistic there.
    """
    tokens = data.tokens("valid")
    windows = eval_windows(len(tokens), context_size, eval_iters * batch_size)
    mine = windows[dist.rank() :: dist.world_size()]
    loss_w = weights = nll = count = 0.0
    was_training = model.training
    model.eval()
    try:
        for x, y in iter_eval_batches(tokens, mine, batch_size):
            xb, yb = to_device(x, device), to_device(y, device)
            with autocast(device, dtype):
                logits = model(xb)
            special = ((yb == SOT_ID) | (yb == EOT_ID)).sum().item()
            w = yb.numel() + (sp_weight - 1.0) * special
            loss_w += lm_loss(logits, yb, label_smoothing, sp_weight).item() * w
            weights += w
            nll += nll_sum(logits, yb).item()
            count += yb.numel()
    finally:
        model.train(was_training)
    loss_w, weights, nll, count = dist.all_reduce_sum([loss_w, weights, nll, count])
    targets = len(tokens) - 1
    split_bytes = data.split_meta("valid").get("bytes")
    mean = nll / max(count, 1)
    bpb = None
    if split_bytes:
        bpb = nll / math.log(2) / (split_bytes * count / targets)
    return Validation(
        loss=loss_w / max(weights, 1),
        nll=mean,
        ppl=math.exp(min(mean, 700.0)),
        bpb=bpb,
        tokens=int(count),
        fraction=count / targets,
    )


# ---------------------------------------------------------------------------- the sample story


def sample_story(model: GPT, tokenizer: Any, cfg: Config, device: str, dtype: torch.dtype) -> str:
    """One greedy story from ``<sot>`` (the study's decoding), without moving any training RNG."""
    from gpt_study.generate import generate

    sample = dataclasses.replace(cfg.sample, greedy=True, max_new_tokens=cfg.train.sample_tokens)
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), autocast(device, dtype):
        result = generate(
            model, tokenizer, "", sample, context_size=cfg.train.context_size, warn=log.warning
        )
    return result.text


# ---------------------------------------------------------------------------- run set-up


def _data_folder(train_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> Path:
    """``--data``, else ``<dataset_root>/<tokenizer>-<vocab_size>`` as ``prepare`` names it."""
    if train_cfg.get("data"):
        return Path(train_cfg["data"])
    return DataConfig(**data_cfg).output_dir()


def _check_meta(data: PreparedData, data_ov: dict[str, Any]) -> None:
    """Flags that describe the corpus must agree with what ``prepare`` recorded."""
    settings = data.meta.get("settings", data.meta)
    for name in ("min_freq", "tokenizer"):
        if name in data_ov and name in settings and settings[name] != data_ov[name]:
            raise UserError(
                f"--{name} {data_ov[name]} but {data.folder} was prepared with {settings[name]}: "
                f"drop the flag or prepare a folder with it"
            )


def _data_config(data: PreparedData, data_ov: dict[str, Any], tokenizer: Any) -> DataConfig:
    """The DataConfig recorded in the checkpoint: what ``prepare`` used, as far as meta says."""
    settings = data.meta.get("settings", {})
    known = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in settings.items() if k in known}
    values.update(data_ov)
    values.setdefault("tokenizer", getattr(tokenizer, "kind", "word"))
    values["vocab_size"] = tokenizer.vocab_size
    values["out"] = str(data.folder)
    try:
        return DataConfig(**values)
    except (TypeError, UserError):
        return DataConfig(tokenizer=values["tokenizer"], vocab_size=tokenizer.vocab_size)


def _resume_config(
    save_root: Path,
    preset: str | None,
    train_ov: dict[str, Any],
    model_ov: dict[str, Any],
) -> Config:
    """The config of the run in ``save_root``, with the flags that may change applied."""
    last = save_root / LAST
    if not (last / "config.json").exists() and not (save_root / f".{LAST}.old").exists():
        raise UserError(
            f"--resume, but {save_root} holds no checkpoint '{LAST}': "
            "drop --resume to start a run, or point --save_root at an existing run"
        )
    if not (last / "config.json").exists():
        last = save_root / f".{LAST}.old"
    cfg = load_config(last / "config.json")
    if preset is not None and preset != cfg.preset:
        raise UserError(
            f"--preset {preset}, but the run in {save_root} used preset {cfg.preset}: "
            "drop --preset when resuming"
        )
    for k, v in model_ov.items():
        if getattr(cfg.model, k) != v:
            raise UserError(
                f"--{k} {v} differs from the checkpoint's {getattr(cfg.model, k)}: the "
                "architecture cannot change on --resume; drop the flag or start a new run"
            )
    d = config_to_dict(cfg)
    for k, v in train_ov.items():
        old = d["train"][k]
        if k not in RESUME_FREE and old != (tuple(v) if isinstance(old, tuple) else v):
            log.warning("--%s %s replaces %s: the resumed run is no longer the same run", k, v, old)
        d["train"][k] = v
    return config_from_dict(d, "resumed config")


@dataclass
class TrainResult:
    """What a call to :func:`fit` ended with."""

    save_root: Path
    step: int
    epoch: int
    stopped: str  # "done", "max_steps", "max_time", "SIGINT", "SIGTERM"
    best_valid_nll: float | None = None
    last_valid: dict[str, Any] = field(default_factory=dict)
    tokens_per_s: float = 0.0

    @property
    def exit_code(self) -> int:
        sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}.get(self.stopped)
        return 128 + int(sig) if sig is not None else 0


class _Metrics:
    """Appends records to metrics.jsonl and metrics.csv (rank 0 only)."""

    def __init__(self, save_root: Path, resume_step: int | None) -> None:
        self.jsonl = save_root / METRICS_JSONL
        self.csv = save_root / METRICS_CSV
        if resume_step is None:
            self.jsonl.unlink(missing_ok=True)
            self.csv.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        if not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(CSV_COLUMNS)

    def _truncate(self, step: int) -> None:
        """Forget records written after the checkpoint we resume from: they will be redone."""
        records = read_metrics(self.jsonl) if self.jsonl.exists() else []
        keep = [r for r in records if r.get("step", 0) <= step]
        tmp = self.jsonl.with_name(f".{self.jsonl.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.jsonl)
        tmp = self.csv.with_name(f".{self.csv.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in keep:
                w.writerow([_csv_cell(r.get(c)) for c in CSV_COLUMNS])
        os.replace(tmp, self.csv)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([_csv_cell(record.get(c)) for c in CSV_COLUMNS])


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl, skipping a torn last line of a killed run."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


@contextlib.contextmanager
def _logging(save_root: Path | None) -> Iterator[None]:
    """Console (and ``info.log``) on rank 0; other ranks only report warnings and errors."""
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if save_root is not None:
        fh = logging.FileHandler(save_root / INFO_LOG, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    handlers[0].setFormatter(logging.Formatter("%(message)s"))
    old_level, old_prop = log.level, log.propagate
    log.setLevel(logging.INFO if dist.is_main() else logging.WARNING)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
        log.propagate = old_prop


class _StopSignals:
    """SIGINT / SIGTERM ask the loop to stop after the current step and save; a second one
    interrupts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name  # the loop notices it after this step

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- RNG states


def _rng_state(device: str) -> dict[str, Any]:
    """This process's random-number states, as JSON (torch's as lists of bytes)."""
    st: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "python": _py_state_to_json(random.getstate()),
        "numpy": _np_state_to_json(np.random.get_state()),
    }
    if device.startswith("cuda"):
        st["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return st


def _set_rng_state(st: dict[str, Any], device: str) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    random.setstate(_py_state_from_json(st["python"]))
    np.random.set_state(_np_state_from_json(st["numpy"]))
    if "cuda" in st and device.startswith("cuda"):
        torch.cuda.set_rng_state(torch.tensor(st["cuda"], dtype=torch.uint8), device)


def _py_state_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_state_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _np_state_to_json(s: tuple) -> list:
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_json(s: list) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- the run


def fit(
    preset: str | None = None,
    train: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or with ``train={"resume": True}`` continue) a run; the library form of the CLI.

    ``preset`` (default ``seed``, the study) gives the starting config; ``train``, ``model`` and
    ``data`` override fields of TrainConfig, GPTConfig and DataConfig (``data`` only names the
    default prepared folder). Works alone or inside a ``torchrun`` process.
    """
    train_ov, model_ov, data_ov = dict(train or {}), dict(model or {}), dict(data or {})
    if "vocab_size" in model_ov:
        raise UserError("the model's vocab_size comes from the tokenizer: drop it")
    device = resolve_device(train_ov.get("device", "auto"))
    device = dist.init(device)
    try:
        return _fit(preset, train_ov, model_ov, data_ov, device)
    finally:
        dist.shutdown()


def _fit(
    preset: str | None,
    train_ov: dict[str, Any],
    model_ov: dict[str, Any],
    data_ov: dict[str, Any],
    device: str,
) -> TrainResult:
    from gpt_study.data.tokenizer import load_tokenizer

    rank, world = dist.rank(), dist.world_size()
    save_root = Path(train_ov.get("save_root", TrainConfig.save_root))
    resume = bool(train_ov.get("resume", False))

    # -- config: a preset plus flags, or the saved run plus the flags that may change
    if resume:
        cfg = _resume_config(save_root, preset, train_ov, model_ov)
        if "data" not in train_ov:
            train_ov["data"] = cfg.train.data
    else:
        if (save_root / LAST).exists() or (save_root / f".{LAST}.old").exists():
            raise UserError(
                f"{save_root} already holds a run: pass --resume to continue it, "
                "or choose another --save_root"
            )
        cfg = None
    folder = _data_folder(train_ov, data_ov)
    data = open_prepared(folder)
    _check_meta(data, data_ov)
    if len(data.tokens("valid")) < 2:
        raise UserError(
            f"{folder}/valid.bin holds no text to validate on: prepare the folder again with "
            "valid stories (a valid file or --valid_fraction)"
        )
    tokenizer = load_tokenizer(data.tokenizer_path)
    if cfg is None:
        train_ov["data"] = str(folder)
        model_ov["vocab_size"] = tokenizer.vocab_size
        d: dict[str, Any] = {k: dict(v) for k, v in PRESETS.get(preset or "seed", {}).items()}
        if (preset or "seed") not in PRESETS:
            raise UserError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        d.setdefault("train", {}).update(train_ov)
        d.setdefault("model", {}).update(model_ov)
        d["data"] = dataclasses.asdict(_data_config(data, data_ov, tokenizer))
        d["preset"] = preset or "seed"  # type: ignore[assignment]
        cfg = config_from_dict(d, f"preset {preset or 'seed'} with flags")
    elif tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(
            f"{folder} has a vocabulary of {tokenizer.vocab_size} tokens but the run in "
            f"{save_root} was trained with {cfg.model.vocab_size}: resume with the run's --data"
        )
    cfg.train.save_root = str(save_root)
    cfg.train.data = str(folder)
    cfg.train.resume = False  # a property of one invocation, not of the run
    tc = cfg.train
    dtype = resolve_dtype(tc.dtype, device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside bf16
    # Where SDPA takes its unfused math path, let it compute in bf16 under bf16 autocast
    # instead of copying to fp32. (CPU attention with dropout runs gpt_study.ops instead.)
    allow_bf16_attention_math(dtype == torch.bfloat16)
    # Keep freed memory for the next step: a CPU step's 32 MiB blocks otherwise come back as
    # fresh zero-filled pages every time (about 1.2x per step in bench_train.py).
    reuse_freed_memory(True)

    # -- model, optimizer and where we start from
    _seed_everything(tc.seed)
    net = GPT(cfg.model).to(device)
    optimizer = make_optimizer(net, tc, device)
    state: dict[str, Any] = {"step": 0, "best_valid_nll": None, "elapsed_s": 0.0}
    if resume:
        ckpt = load_checkpoint(save_root / LAST, device, optimizer=True)
        net.load_state_dict(ckpt.model.state_dict())
        state = dict(ckpt.state)
        extra = ckpt.optimizer_state or {}
        if "optimizer" not in extra:
            raise UserError(
                f"{ckpt.path} has no optimizer state, so it cannot be resumed exactly: "
                "start a new run (it was written without optimizer.pt)"
            )
        optimizer.load_state_dict(extra["optimizer"])
        for g in optimizer.param_groups:  # the config, not the checkpoint, sets hyperparameters
            g.update(betas=tuple(tc.lr_betas), eps=tc.eps)
            g["weight_decay"] = tc.weight_decay if g["weight_decay"] else 0.0
        rngs = state.get("rng", [])
        if len(rngs) == world:
            _set_rng_state(rngs[rank], device)
        else:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: dropout "
                "randomness is reseeded (data order and weights continue exactly)",
                len(rngs),
                world,
            )
            torch.manual_seed(tc.seed + 1 + rank + state["step"])
    else:
        # Dropout draws differ per rank (the weights above were drawn identically everywhere).
        torch.manual_seed(tc.seed + 1 + rank)

    compiled: torch.nn.Module = torch.compile(net) if tc.compile else net
    # The model and the loss as one module, so DDP and torch.compile wrap both. LMLoss runs the
    # output layer and the loss chunk by chunk without the (B, T, V) logits (loss.head_loss): the
    # output layer is most of a step, and a whole tiny-preset step got about 1.75x faster here.
    stepper: torch.nn.Module = LMLoss(net, tc.label_smoothing, tc.sp_weight)
    if tc.compile:
        stepper = torch.compile(stepper)
    if dist.is_distributed():
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        stepper = DDP(stepper, device_ids=ids)

    sampler = RowSampler(
        data.tokens("train"), tc.context_size, tc.batch_size, tc.seed, rank, world, tc.grad_accum
    )
    old_rows = state.get("sampler", {}).get("global_rows")
    if resume and old_rows is not None and old_rows != sampler.global_rows:
        log.warning(
            "the global batch was %d rows and is now %d: the resumed run draws other rows than "
            "the stopped one would have (keep batch_size x processes x grad_accum to continue "
            "exactly)",
            old_rows,
            sampler.global_rows,
        )
    if dist.is_main():
        save_root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    with _logging(save_root if dist.is_main() else None), _StopSignals() as stop:
        step = int(state["step"])
        metrics = _Metrics(save_root, step if resume else None) if dist.is_main() else None
        if dist.is_main():
            save_config(save_root / "config.json", cfg)
        r = _Run(cfg, net, compiled, stepper, optimizer, sampler, data, tokenizer, device, dtype)
        r.state, r.metrics, r.stop = state, metrics, stop
        log.info(
            "%s run in %s: preset %s, %s parameters, %s on %s, %d process(es)",
            "resuming" if resume else "new",
            save_root,
            cfg.preset,
            f"{net.num_params():,}",
            str(dtype).replace("torch.", ""),
            device,
            world,
        )
        log.info(
            "data %s: %s train / %s valid tokens, vocabulary %d",
            folder,
            f"{len(data.tokens('train')):,}",
            f"{len(data.tokens('valid')):,}",
            tokenizer.vocab_size,
        )
        log.info(
            "global batch = %d rows x %d process(es) x %d accumulation = %d rows = %s tokens "
            "per step; %d epochs x %d steps",
            tc.batch_size,
            world,
            tc.grad_accum,
            sampler.global_rows,
            f"{r.tokens_per_step:,}",
            tc.epoch,
            tc.iters_per_epoch,
        )
        r.wb = _wandb(cfg, state) if tc.wb_flag and dist.is_main() else None
        try:
            return _loop(r, step)
        finally:
            if r.wb is not None:
                r.wb.finish()


def _wandb(cfg: Config, state: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError(
            "--wb_flag needs Weights & Biases: pip install wandb (or drop --wb_flag)"
        ) from None
    tc = cfg.train
    run_id = state.get("wandb_id") or wandb.util.generate_id()
    state["wandb_id"] = run_id
    return wandb.init(
        project=tc.wb_project,
        name=tc.wb_name,
        notes=tc.wb_notes,
        tags=tc.wb_tags or None,
        config=config_to_dict(cfg),
        id=run_id,
        resume="allow",
    )


@dataclass
class _Run:
    """Everything one training run holds, passed around the loop's parts."""

    cfg: Config
    net: GPT  # the plain model: weights, checkpoints, the sample story
    compiled: torch.nn.Module  # net, or torch.compile(net): validation
    stepper: torch.nn.Module  # LMLoss(net), compiled, in DDP under torchrun: training steps
    optimizer: torch.optim.Optimizer
    sampler: RowSampler
    data: PreparedData
    tokenizer: Any
    device: str
    dtype: torch.dtype
    state: dict[str, Any] = field(default_factory=dict)  # what state.json records
    metrics: _Metrics | None = None  # rank 0 only
    stop: _StopSignals | None = None
    wb: Any = None  # the wandb run, rank 0 with --wb_flag only

    @property
    def tokens_per_step(self) -> int:
        return self.sampler.global_rows * self.cfg.train.context_size

    @property
    def save_root(self) -> Path:
        return Path(self.cfg.train.save_root)

    def log(self, rec: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(rec)
        if self.wb is not None:
            self.wb.log({k: v for k, v in rec.items() if k != "kind"}, step=rec["step"])


def _train_step(r: _Run, step: int) -> tuple[float, bool]:
    """One optimizer step of ``grad_accum`` micro-steps; (mean loss, whether it was finite).

    Under DDP the gradients are averaged over ranks only in the last micro-step's backward
    (``no_sync`` on the others), so accumulation costs no extra communication.
    """
    tc = r.cfg.train
    lr = lr_at(step, tc)
    for g in r.optimizer.param_groups:
        g["lr"] = lr
    ddp = isinstance(r.stepper, torch.nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=r.device)
    for micro in range(tc.grad_accum):
        x, y = r.sampler.batch(step, micro)
        xb, yb = to_device(x, r.device), to_device(y, r.device)  # (B, T) each
        last = micro == tc.grad_accum - 1
        with contextlib.nullcontext() if last or not ddp else r.stepper.no_sync():
            with autocast(r.device, r.dtype):
                loss = r.stepper(xb, yb)
            (loss / tc.grad_accum).backward()
        loss_sum += loss.detach()
    finite = True
    if tc.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(r.net.parameters(), tc.grad_clip)
        finite = math.isfinite(norm.item())
    r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    loss_val = loss_sum.item() / tc.grad_accum
    return loss_val, finite and math.isfinite(loss_val)


def _loop(r: _Run, step: int) -> TrainResult:
    """Steps until the epochs are done, a budget is spent, a signal arrives or the loss breaks."""
    tc, state, ipe = r.cfg.train, r.state, r.cfg.train.iters_per_epoch
    total_steps = tc.epoch * ipe
    started = time.perf_counter()
    elapsed_before = float(state.get("elapsed_s", 0.0))

    def result(stopped: str, rate: float = 0.0) -> TrainResult:
        best = state.get("best_valid_nll")
        return TrainResult(
            r.save_root, step, step // ipe, stopped, best, state.get("last_valid", {}), rate
        )

    if step >= total_steps:
        log.info("the run is complete (%d steps): raise --epoch to train longer", step)
        return result("done")
    if tc.max_steps and step >= tc.max_steps:
        log.info(
            "already at step %d >= --max_steps %d: pass a larger --max_steps (0: no cap)",
            step,
            tc.max_steps,
        )
        return result("max_steps")

    r.stepper.train()
    window_loss, window_steps, window_t, rate = 0.0, 0, time.perf_counter(), 0.0
    bar = None
    while True:
        if bar is None:
            bar = tqdm(
                total=ipe,
                initial=step % ipe,
                desc=f"epoch {step // ipe + 1}/{tc.epoch}",
                unit="step",
                dynamic_ncols=True,
                leave=False,
                disable=None if dist.is_main() else True,
            )
        loss_val, finite = _train_step(r, step)
        step += 1
        now = time.perf_counter()
        time_up = bool(tc.max_time) and (now - started) > tc.max_time * 60
        received = r.stop.received if r.stop else None
        # One small all-reduce: the mean loss over ranks (the global batch's), and flags that
        # make every rank take the same branch below (else one would wait forever for the others).
        loss_val, bad, time_up, sigint, sigterm = dist.all_reduce_sum(
            [loss_val, not finite, time_up, received == "SIGINT", received == "SIGTERM"]
        )
        loss_val /= dist.world_size()
        if bad:
            bar.close()
            good = r.save_root / LAST
            where = f"the last good checkpoint is {good}" if good.exists() else "no checkpoint yet"
            msg = (
                f"the loss became {loss_val} at step {step}: training stopped ({where}); "
                "lower --lr, set --grad_clip 1.0 or use --dtype float32"
            )
            if dist.is_main():
                raise UserError(msg)
            raise SystemExit(2)

        window_loss += loss_val
        window_steps += 1
        bar.update(1)
        if step % tc.print_interval == 0 or step % ipe == 0:
            rate = window_steps * r.tokens_per_step / max(now - window_t, 1e-9)
            train_loss = window_loss / window_steps
            elapsed = elapsed_before + now - started
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate:,.0f}")
            log.info(
                "step %d/%d | epoch %d | loss %.4f | lr %.2e | %s tok/s | %s",
                step,
                total_steps,
                (step - 1) // ipe + 1,
                train_loss,
                lr_at(step - 1, tc),
                f"{rate:,.0f}",
                _hms(elapsed),
            )
            r.log(
                {
                    "kind": "train",
                    "step": step,
                    "epoch": (step - 1) // ipe + 1,
                    "tokens": step * r.tokens_per_step,
                    "train_loss": train_loss,
                    "lr": lr_at(step - 1, tc),
                    "tokens_per_s": rate,
                    "elapsed_s": elapsed,
                }
            )
            window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()

        signalled = "SIGINT" if sigint else "SIGTERM" if sigterm else None
        budget = None
        if tc.max_steps and step >= tc.max_steps:
            budget = "max_steps"
        elif time_up:
            budget = "max_time"
        done = step >= total_steps
        if step % ipe == 0 or budget or signalled or done:
            bar.close()
            bar = None
            state["elapsed_s"] = elapsed_before + time.perf_counter() - started
            state["step"] = step
            if signalled:
                if dist.is_main():  # every rank got the signal; one line says so
                    log.warning("%s: stopping at step %d and saving a checkpoint", signalled, step)
                _save(r, is_best=False)
                log.info("checkpoint saved in %s: continue with --resume", r.save_root / LAST)
                return result(signalled, rate)
            is_best = _end_of_epoch(r, step)
            _save(r, is_best)
            if dist.is_main():
                _redraw(r.save_root)
            if budget or done:
                log.info(
                    "finished (%s) at step %d, epoch %d; best valid NLL %.4f at step %s; "
                    "checkpoints in %s",
                    budget or "done",
                    step,
                    step // ipe,
                    state["best_valid_nll"],
                    state.get("best_step"),
                    r.save_root,
                )
                return result(budget or "done", rate)
            r.stepper.train()
            window_t = time.perf_counter()  # throughput counts training time only


def _end_of_epoch(r: _Run, step: int) -> bool:
    """Validate (all ranks), log, write the sample story (rank 0); True if this is the best."""
    tc, state = r.cfg.train, r.state
    v = validate(
        r.compiled,
        r.data,
        tc.context_size,
        tc.batch_size,
        tc.label_smoothing,
        tc.sp_weight,
        tc.eval_iters,
        r.device,
        r.dtype,
    )
    best = state.get("best_valid_nll")
    is_best = best is None or v.nll < best
    if is_best:
        state["best_valid_nll"], state["best_step"] = v.nll, step
    state["last_valid"] = {"step": step, **v.as_dict()}
    bpb = f"{v.bpb:.4f}" if v.bpb is not None else "n/a"
    share = "" if v.fraction > 0.999 else f" ({v.fraction:.0%} of the split)"
    log.info(
        "valid @ step %d: loss %.4f (smoothed, weighted) | NLL %.4f nats/token | ppl %.2f | "
        "%s bits/byte%s%s",
        step,
        v.loss,
        v.nll,
        v.ppl,
        bpb,
        share,
        " | best" if is_best else "",
    )
    r.log(
        {
            "kind": "valid",
            "step": step,
            "epoch": (step - 1) // tc.iters_per_epoch + 1,
            "tokens": step * r.tokens_per_step,
            **v.as_dict(),
            "elapsed_s": state["elapsed_s"],
        }
    )
    if dist.is_main() and tc.sample_tokens > 0:
        try:
            log.info("sample: %s", sample_story(r.net, r.tokenizer, r.cfg, r.device, r.dtype))
        except Exception as e:  # a sample is a nicety; never lose a run to it
            log.warning("could not write the sample story: %s", e)
    return is_best


def _save(r: _Run, is_best: bool) -> None:
    """Checkpoint ``last`` (and ``best``) on rank 0; every rank sends its RNG state first."""
    rngs = dist.gather_json(_rng_state(r.device))
    if dist.is_main():
        tc = r.cfg.train
        st = dict(r.state, rng=rngs, world_size=dist.world_size(), torch=torch.__version__)
        st["epoch"] = st["step"] // tc.iters_per_epoch
        st["tokens"] = st["step"] * r.tokens_per_step
        st["sampler"] = {
            "kind": "random-windows",
            "seed": tc.seed,
            "position": st["step"],
            "global_rows": r.sampler.global_rows,
        }
        extra = {"optimizer": r.optimizer.state_dict()}
        tok = r.data.tokenizer_path
        save_checkpoint(r.save_root / LAST, r.net, r.cfg, tok, st, extra)
        if is_best:
            best = {k: v for k, v in st.items() if k != "rng"}
            save_checkpoint(r.save_root / BEST, r.net, r.cfg, tok, best)
    dist.barrier()


def _redraw(save_root: Path) -> None:
    from gpt_study.plot import plot_run

    try:
        plot_run(save_root)
    except Exception as e:  # a plot is a nicety; never lose a run to it
        log.warning("could not draw %s: %s", save_root / PLOT, e)


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


__all__ = [
    "TrainResult",
    "Validation",
    "fit",
    "lr_at",
    "make_optimizer",
    "sample_story",
    "validate",
]
