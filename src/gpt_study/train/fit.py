"""``fit(cfg)``: set a run up from one Config and train it.

Exact resume. A checkpoint holds the weights, the optimizer state, the step and the random-number
states of every process (:mod:`gpt_study.train.state`). Training rows are a pure function of
``(seed, step)`` (:class:`~gpt_study.data.dataset.RowSampler`) and the learning rate a pure
function of the step, so the data position and the schedule need no state of their own.
Validation and the sample story run inside :func:`torch.random.fork_rng`, so they never move the
generator that drives dropout. A run stopped and resumed therefore reaches bit-identical weights
to one that never stopped (on the same device, dtype and thread count; ``tests/test_train.py``
checks it).

Many processes. Under ``torchrun`` each process takes its slice of every step's rows, the model
is wrapped in DistributedDataParallel, validation is sharded and summed, and only rank 0 logs,
samples, plots and writes; the others wait at a barrier.

``fit`` applies the run's threads and speed settings for its own duration
(:func:`gpt_study.runtime.process_settings`), so a notebook's ``fit`` trains as ``gpt-study
train`` does and changes nothing process-wide once it returns. Under ``--threads auto`` on a CPU the loop
switches torch between 1 thread and all cores, whichever trains faster each epoch
(:class:`~gpt_study.runtime.ThreadTuner`), and ``fit`` puts the count back when it returns;
likewise the attention path that the run's plan chose (``--attention``, the switch of
:mod:`gpt_study.model.kernels`). Every device choice comes from one :class:`RuntimePlan`
(:func:`runtime_plan`; docs/train.md, "Device choices"). Threads change the order of
floating-point sums, so the bit-identical resume above needs the same pinned ``--threads N`` in
both runs.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from gpt_study.checkpoint import load_checkpoint
from gpt_study.config import Config, TrainConfig, save_config
from gpt_study.config.train import RuntimeConfig
from gpt_study.data.dataset import PreparedData, RowSampler, open_prepared
from gpt_study.data.tokenizer import Tokenizer, load_tokenizer
from gpt_study.model.gpt import GPT
from gpt_study.model.kernels import cpu_path
from gpt_study.model.loss import LMLoss
from gpt_study.runs import CONFIG, LAST, check_save_root, damaged_last
from gpt_study.runtime import distributed
from gpt_study.runtime.device import process_settings, resolve_device, thread_tuning
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.lock import folder_lock
from gpt_study.runtime.plan import RuntimePlan, grad_scaler, resolve_plan
from gpt_study.train.context import Run, TrainResult
from gpt_study.train.ema import weight_average
from gpt_study.train.loop import train_loop
from gpt_study.train.observe import Observer, console_and_log
from gpt_study.train.optim import Optimizer, load_optimizer_state, make_optimizer
from gpt_study.train.signals import StopSignals
from gpt_study.train.state import TrainState, seed_everything, set_rng_state

log = logging.getLogger("gpt_study.train")


def fit(cfg: Config, resume: bool = False) -> TrainResult:
    """Train the run ``cfg`` describes; ``resume``: continue it from ``last`` (how this call
    starts, not a setting of the run, so no config records it).

    Build ``cfg`` with :func:`gpt_study.train.setup.build_config`. Works alone or inside a
    ``torchrun`` process.
    """
    rt = cfg.train.runtime
    # Under torchrun the plan is made for this rank's own GPU (cuda:N), once init has chosen it.
    plan = runtime_plan(rt, distributed.init(resolve_device(rt.device), rt.backend))
    save_root = Path(cfg.train.save_root)
    try:
        data, tokenizer = _open_data(cfg, resume)
        with (
            process_settings(rt.threads, plan.device, plan.dtype, training=True),
            _run_lock(save_root),
        ):
            r = _build(cfg, data, tokenizer, plan, resume)
            if distributed.is_main():
                r.save_root.mkdir(parents=True, exist_ok=True)
            distributed.barrier()
            return _train(cfg, r, resume)
    finally:
        distributed.shutdown()


def runtime_plan(rt: RuntimeConfig, device: str | None = None) -> RuntimePlan:
    """The run's device choices on ``device`` (default: ``rt.device``), each resolved by
    :mod:`gpt_study.runtime.plan` (docs/train.md, "Device choices"); a forced choice that cannot
    run there is refused with one line."""
    return resolve_plan(
        device or rt.device,
        rt.dtype,
        fused_adamw=rt.fused_adamw,
        pin_memory=rt.pin_memory,
        attention=rt.attention,
        compile=rt.compile,
        backend=rt.backend,
    )


def _run_lock(save_root: Path) -> contextlib.AbstractContextManager[None]:
    """One writer per run folder: rank 0 holds its lock for the whole run (the other ranks write
    nothing there)."""
    if not distributed.is_main():
        return contextlib.nullcontext()
    return folder_lock(save_root, "--save_root", warn=log.warning)


def _train(cfg: Config, r: Run, resume: bool) -> TrainResult:
    """Console and log, signals, the observer, the thread tuning and the plan's attention path
    (:func:`gpt_study.model.kernels.cpu_path`, put back on return) around the loop."""
    with (
        console_and_log(r.save_root if distributed.is_main() else None),
        StopSignals() as r.stop,
    ):
        if distributed.is_main():
            save_config(r.save_root / CONFIG, cfg)
        r.observer = Observer(cfg, r.state, resume)
        _log_start(r, resume)
        try:
            with (
                thread_tuning(
                    cfg.train.runtime.threads, r.device, log.info, r.plan.compile
                ) as r.tuner,
                cpu_path(r.plan.attention == "cpu_kernels"),
            ):
                return train_loop(r)
        finally:
            r.observer.close()


def _open_data(cfg: Config, resume: bool) -> tuple[PreparedData, Tokenizer]:
    """The prepared folder and its tokenizer, checked against the run before anything is written."""
    tc = cfg.train
    save_root = Path(tc.save_root)
    if not tc.data:
        raise UserError("no prepared folder in the config: build it with build_config")
    check_save_root(save_root, resume, [Path(tc.data)])
    data = open_prepared(tc.data)
    if len(data.tokens("valid")) < 2:
        raise UserError(
            f"{data.folder}/valid.bin holds no text to validate on: prepare the folder again "
            "with valid stories (a valid file or --valid_fraction)"
        )
    tokenizer = load_tokenizer(data.tokenizer_path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(
            f"{data.folder} has a vocabulary of {tokenizer.vocab_size} tokens but the run in "
            f"{save_root} was trained with {cfg.model.vocab_size}: resume with the run's --data"
        )
    return data, tokenizer


def _build(
    cfg: Config, data: PreparedData, tokenizer: Tokenizer, plan: RuntimePlan, resume: bool
) -> Run:
    """Model, optimizer, loss scaler, state (fresh or resumed) and data order."""
    tc, device = cfg.train, plan.device
    seed_everything(tc.seed)
    net = GPT(cfg.model).to(device)
    net.trained_window = tc.window  # the sample story and any library call read this window
    optimizer = make_optimizer(net, tc, device)
    scaler = grad_scaler(plan)
    state, extra = _resume(net, optimizer, scaler, tc, device) if resume else (TrainState(), {})
    if tc.init_from and not resume:  # fine-tuning: the checkpoint's weights, a fresh optimizer
        net.load_state_dict(load_checkpoint(tc.init_from, device).model.state_dict())
    ema = weight_average(net, tc.optim.ema)  # --ema: of the weights training starts from
    if ema is not None and resume:
        ema.load_state_dict(extra.get("ema") or {}, str(Path(tc.save_root) / LAST))
    _check_same_data(state, data, resume)
    if not resume:
        # Dropout draws differ per rank (the weights above were drawn identically everywhere).
        torch.manual_seed(tc.seed + 1 + distributed.rank())
    loss_fn = _wrap(net, tc, plan, tokenizer.special_ids)
    sampler = _sampler(data, tc, state, tokenizer.sot_id)
    return Run(
        cfg,
        net,
        loss_fn,
        optimizer,
        sampler,
        data,
        tokenizer,
        plan,
        state,
        scaler,
        ema=ema,
    )


def _check_same_data(state: TrainState, data: PreparedData, resume: bool) -> None:
    """A run records the digests of the tokenizer and ids it starts on; a resumed run must find
    the same (``prepare --force`` of another corpus into its folder would otherwise go on
    training over ids that mean other words)."""
    now = data.info.rest.get("digests")
    now = now if isinstance(now, dict) else {}
    if not resume:
        state.data_digests = dict(now)
        return
    was = state.data_digests
    changed = sorted(k for k in set(was) & set(now) if was[k] != now[k])
    if changed or (was and not now):
        what = ", ".join(changed) or "its digests (meta.json no longer records them)"
        raise UserError(
            f"{data.folder} changed since this run started ({what} differ from the run's "
            "state.json): resume with the folder the run was trained on, or start a new run"
        )


def _resume(
    net: GPT,
    optimizer: Optimizer,
    scaler: torch.amp.GradScaler | None,
    tc: TrainConfig,
    device: str,
) -> tuple[TrainState, dict[str, Any]]:
    """Load ``last`` into the model, optimizer and loss scaler (a float16 run's, when it has one);
    each process gets back its RNG state. Returns the state and the rest of ``optimizer.pt``
    (the weight average of ``--ema``)."""
    try:
        ckpt = load_checkpoint(Path(tc.save_root) / LAST, device, optimizer=True)
        state = TrainState.from_dict(ckpt.state, ckpt.path / "state.json")
    except UserError as e:
        raise damaged_last(Path(tc.save_root), e) from None
    net.load_state_dict(ckpt.model.state_dict())
    extra = ckpt.optimizer_state or {}
    if "optimizer" not in extra:
        raise UserError(
            f"{ckpt.path} has no optimizer state, so it cannot be resumed exactly: "
            "start a new run (it was written without optimizer.pt)"
        )
    load_optimizer_state(optimizer, extra["optimizer"], tc)
    if scaler is not None and "scaler" in extra:
        scaler.load_state_dict(extra["scaler"])
    rank, world = distributed.rank(), distributed.world_size()
    if len(state.rng) == world:
        set_rng_state(state.rng[rank], device)
    else:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: dropout "
            "randomness is reseeded (data order and weights continue exactly)",
            len(state.rng),
            world,
        )
        torch.manual_seed(tc.seed + 1 + rank + state.step)
    return state, extra


def _wrap(
    net: GPT, tc: TrainConfig, plan: RuntimePlan, special_ids: tuple[int, ...]
) -> torch.nn.Module:
    """The (x, y) -> loss module training steps run; ``sp_weight`` weighs the tokenizer's
    ``special_ids``.

    The model and the loss as one module, so DDP and torch.compile wrap both. LMLoss runs the
    output layer and the loss chunk by chunk without the (B, T, V) logits (loss.head_loss),
    because the output layer is most of a step (the speed-up: docs/train.md, "Measurements").
    Only this step is compiled: validation runs the plain model, because compiling its no-grad
    graphs (and again for a last, shorter batch) cost more time than it saved (docs/train.md,
    "torch.compile").
    """
    loss_fn: torch.nn.Module = LMLoss(net, tc.loss.label_smoothing, tc.loss.sp_weight, special_ids)
    if plan.compile:
        loss_fn = torch.compile(loss_fn)
    if distributed.is_distributed():
        device = plan.device
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        loss_fn = DistributedDataParallel(loss_fn, device_ids=ids)
    return loss_fn


def _sampler(data: PreparedData, tc: TrainConfig, state: TrainState, sot_id: int) -> RowSampler:
    sampler = RowSampler(
        data.tokens("train"),
        tc.rows.context_size,
        tc.rows.batch_size,
        tc.seed,
        distributed.rank(),
        distributed.world_size(),
        tc.rows.grad_accum,
        aligned=tc.rows.study_rows,
        story_starts=tc.rows.story_starts,
        sot_id=sot_id,
    )
    old_rows = state.sampler.get("global_rows")
    if old_rows is not None and old_rows != sampler.global_rows:  # a new run has none
        log.warning(
            "the global batch was %d rows and is now %d: the resumed run draws other rows than "
            "the stopped one would have (keep batch_size x processes x grad_accum to continue "
            "exactly)",
            old_rows,
            sampler.global_rows,
        )
    return sampler


def _log_start(r: Run, resume: bool) -> None:
    tc = r.cfg.train
    log.info(
        "%s run in %s: preset %s, %s parameters, %s on %s, %d process(es)",
        "resuming" if resume else "new",
        r.save_root,
        r.cfg.preset,
        f"{r.net.num_params():,}",
        str(r.dtype).replace("torch.", ""),
        r.device,
        distributed.world_size(),
    )
    log.info("device choices: %s", r.plan.describe())
    if tc.init_from and not resume:
        log.info("weights from %s (fine-tuning: the optimizer starts fresh)", tc.init_from)
    log.info(
        "data %s: %s train / %s valid tokens, vocabulary %d",
        r.data.folder,
        f"{len(r.data.tokens('train')):,}",
        f"{len(r.data.tokens('valid')):,}",
        r.tokenizer.vocab_size,
    )
    log.info(
        "global batch = %d rows x %d process(es) x %d accumulation = %d rows = %s tokens "
        "per step; %d epochs x %d steps",
        tc.rows.batch_size,
        distributed.world_size(),
        tc.rows.grad_accum,
        r.sampler.global_rows,
        f"{r.tokens_per_step:,}",
        tc.budget.epoch,
        tc.budget.iters_per_epoch,
    )
