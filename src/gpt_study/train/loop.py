"""The training loop: optimizer steps, with validation, a sample story and checkpoints at the end
of every epoch (``--iters_per_epoch`` steps, as in the study).

:func:`train_loop` reads top down as the outline of a run; each part is a named function below
it. Ranks agree every step on the mean loss and on whether to stop (a signal, the time budget or
a non-finite loss on any rank), so none is left waiting at a collective.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from gpt_study.checkpoint import save_checkpoint
from gpt_study.config import save_config
from gpt_study.model.masks import mask_stream
from gpt_study.runs import BEST, CONFIG, LAST
from gpt_study.runtime import distributed
from gpt_study.runtime.device import autocast, to_device
from gpt_study.runtime.errors import UserError
from gpt_study.train.budget import EpochFit
from gpt_study.train.context import Run, TrainResult
from gpt_study.train.ema import evaluated_weights
from gpt_study.train.observe import epoch_bar, hms
from gpt_study.train.optim import dropout_on, lr_at
from gpt_study.train.state import rng_state
from gpt_study.train.validate import sample_story, validate

log = logging.getLogger("gpt_study.train")
SIGNALS = ("SIGINT", "SIGTERM")


def train_loop(r: Run) -> TrainResult:
    """Epochs until they are done, a budget is spent, a signal arrives or the loss breaks."""
    step = r.state.step
    if finished := _nothing_to_do(r, step):
        return finished
    clock, window = _Clock(elapsed_before=r.state.elapsed_s), _LogWindow()
    fit_epochs = EpochFit()
    while True:
        r.loss_fn.train()
        step, stop = train_epoch(r, step, clock, window)
        r.state.elapsed_s, r.state.step = clock.elapsed(), step
        if stop in SIGNALS:
            return _save_on_signal(r, stop, window.rate)
        is_best = end_of_epoch(r, step)
        if fit_epochs(r.cfg.train, step, clock.elapsed(), clock.spent()) and distributed.is_main():
            save_config(r.save_root / CONFIG, r.cfg)  # the run's config: the fitted one
        save(r, is_best)
        if stop in (None, "done"):  # the schedule as fitted now: longer, shorter or the same
            stop = "done" if r.cfg.train.budget.schedule_done(step) else None
        r.observer.redraw()
        if stop:
            return _finish(r, stop, window.rate)
        window.started = time.perf_counter()  # throughput counts training time only


def train_epoch(r: Run, step: int, clock: _Clock, window: _LogWindow) -> tuple[int, str | None]:
    """Steps from ``step`` to the end of its epoch, or to a stop; (the step reached, why it
    stopped early or None). The progress bar is gone when it returns or raises."""
    tc, ipe = r.cfg.train, r.cfg.train.budget.iters_per_epoch
    r.tuner.new_epoch(ipe - step % ipe)  # --threads auto: time the thread counts again
    with epoch_bar(step, tc) as bar:
        while True:
            with r.tuner.step():
                loss, finite = train_step(r, step)
            step += 1
            agreed = _agree(r, loss, finite, clock)
            if agreed.bad:
                bar.close()
                _stop_on_bad_loss(r, step, agreed.loss)
            bar.update(1)
            window.add(agreed.loss)
            if step % tc.log.print_interval == 0 or step % ipe == 0:
                _log_train(r, step, clock, window, bar)
            stop = _stop_reason(r, step, agreed)
            if step % ipe == 0 or stop:
                return step, stop


def train_step(r: Run, step: int) -> tuple[float, bool]:
    """One optimizer step of ``grad_accum`` micro-steps; (mean loss, whether it was finite).

    Under DDP the gradients are averaged over ranks only in the last micro-step's backward
    (``no_sync`` on the others), so accumulation costs no extra communication. Under
    ``--dtype float16`` the run's GradScaler scales the loss and skips a step whose gradients
    overflowed (a non-finite gradient norm is then no reason to stop).
    """
    tc = r.cfg.train
    r.net.use_dropout(dropout_on(step, tc))
    lr = lr_at(step, tc)
    for g in r.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # Muon's groups: --muon_lr / --lr
    ddp = isinstance(r.loss_fn, torch.nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=r.device)
    for micro in range(tc.rows.grad_accum):
        x, y = r.sampler.batch(step, micro)
        pin = r.plan.pin_memory
        xb, yb = to_device(x, r.device, pin), to_device(y, r.device, pin)  # (B, T) each
        last = micro == tc.rows.grad_accum - 1
        with contextlib.nullcontext() if last or not ddp else r.loss_fn.no_sync():
            with autocast(r.device, r.dtype), mask_stream():  # the step's CPU masks at once
                loss = r.loss_fn(xb, yb)
            scaled = loss / tc.rows.grad_accum
            (r.scaler.scale(scaled) if r.scaler else scaled).backward()
        loss_sum += loss.detach()
    finite = True
    if r.scaler:
        r.scaler.unscale_(r.optimizer)  # type: ignore[arg-type]  # clip the true gradients
    if tc.optim.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(r.net.parameters(), tc.optim.grad_clip)
        finite = math.isfinite(norm.item()) or r.scaler is not None
    if r.scaler:
        r.scaler.step(r.optimizer)  # type: ignore[arg-type]  # skipped if gradients overflowed
        r.scaler.update()
    else:
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    if r.ema is not None:
        r.ema.update()
    loss_val = loss_sum.item() / tc.rows.grad_accum
    return loss_val, finite and math.isfinite(loss_val)


def end_of_epoch(r: Run, step: int) -> bool:
    """Validate (all ranks), log, write the sample story (rank 0); True if this is the best."""
    tc, state = r.cfg.train, r.state
    with evaluated_weights(r.ema):
        v = validate(r.net, r.data, tc, r.dtype, r.tokenizer)
    # The study kept the checkpoint of lowest valid loss (smoothed, weighted): --best_by loss.
    now, best = (
        v.as_dict(),
        {"valid_loss": state.best_valid_loss, "valid_nll": state.best_valid_nll},
    )
    is_best = tc.valid.best_of([best, now]) is now
    if is_best:
        state.best_valid_nll, state.best_valid_loss, state.best_step = v.nll, v.loss, step
    state.last_valid = {"step": step, **v.as_dict()}
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
    failed = _sample(r, step) if distributed.is_main() and tc.valid.sample_tokens > 0 else None
    r.observer.record(
        {
            "kind": "valid",
            "step": step,
            "epoch": (step - 1) // tc.budget.iters_per_epoch + 1,
            "tokens": step * r.tokens_per_step,
            **v.as_dict(),
            "elapsed_s": state.elapsed_s,
            **({"sample_error": failed} if failed else {}),
        }
    )
    return is_best


def _sample(r: Run, step: int) -> str | None:
    """Log the greedy sample story; if it fails, warn and return the error as ``Type: message``.

    A broken sample must not cost a user the run, nor pass unseen: it is a warning on the
    console, a ``sample_error`` in the valid row of metrics.jsonl, and, through the log record's
    ``sample_error`` attribute, a failed test in the project's own tests (tests/conftest.py).
    """
    try:
        with evaluated_weights(r.ema):
            story = sample_story(r.net, r.tokenizer, r.cfg, r.device, r.dtype)
        log.info("sample: %s", story)
    except Exception as e:
        error = " ".join(f"{type(e).__name__}: {e}".split())  # one line
        log.warning(
            "the sample story after step %d failed (%s); training goes on: "
            "gpt-study generate --checkpoint %s --greedy shows the error in full",
            step,
            error,
            r.save_root / LAST,
            extra={"sample_error": error},
        )
        return error
    return None


def save(r: Run, is_best: bool) -> None:
    """Checkpoint ``last`` (and ``best``) on rank 0; every rank sends its RNG state first."""
    rngs = distributed.gather_json(rng_state(r.device))
    if distributed.is_main():
        tc, st = r.cfg.train, r.state
        st.rng, st.world_size, st.torch = (
            list(rngs or []),
            distributed.world_size(),
            torch.__version__,
        )
        st.epoch = st.step // tc.budget.iters_per_epoch
        st.tokens = st.step * r.tokens_per_step
        st.sampler = {
            "kind": "random-windows",
            "seed": tc.seed,
            "position": st.step,
            "global_rows": r.sampler.global_rows,
        }
        extra = {"optimizer": r.optimizer.state_dict()}
        if r.scaler:
            extra["scaler"] = r.scaler.state_dict()
        if r.ema is not None:
            extra["ema"] = r.ema.state_dict()
        tok = r.data.tokenizer_path
        save_checkpoint(r.save_root / LAST, r.net, r.cfg, tok, st.to_dict(), extra)
        if is_best:
            best = st.to_dict(with_rng=False)
            with evaluated_weights(r.ema):  # what validation scored
                save_checkpoint(r.save_root / BEST, r.net, r.cfg, tok, best)
    distributed.barrier()


# ---------------------------------------------------------------- the loop's small parts


@dataclass
class _Clock:
    """Time the run has trained: since this invocation ``started`` (what ``--max_time``
    budgets) plus ``elapsed_before`` it (a resumed run's earlier invocations)."""

    elapsed_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + self.spent()

    def spent(self) -> float:
        """Seconds of this invocation."""
        return time.perf_counter() - self.started


@dataclass
class _LogWindow:
    """The steps since the last train log line: their summed loss and their count, the time
    they started from, and the throughput (tokens/s) the last log line reported."""

    started: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    steps: int = 0
    rate: float = 0.0

    def add(self, loss: float) -> None:
        self.loss_sum += loss
        self.steps += 1

    def restart(self) -> None:
        self.loss_sum, self.steps, self.started = 0.0, 0, time.perf_counter()


@dataclass
class _Agreed:
    """What every rank agrees on after a step: the mean loss and the stop flags."""

    loss: float
    bad: bool
    time_up: bool
    signal: str | None


def _agree(r: Run, loss: float, finite: bool, clock: _Clock) -> _Agreed:
    """One small all-reduce: the mean loss over ranks (the global batch's), and flags that make
    every rank take the same branch (else one would wait forever for the others)."""
    budget_s = r.cfg.train.budget.max_time_s
    time_up = bool(budget_s) and clock.spent() > budget_s
    received = r.stop.received
    loss, bad, time_up, sigint, sigterm = distributed.all_reduce_sum(
        [loss, not finite, time_up, received == "SIGINT", received == "SIGTERM"]
    )
    signalled = "SIGINT" if sigint else "SIGTERM" if sigterm else None
    return _Agreed(loss / distributed.world_size(), bool(bad), bool(time_up), signalled)


def _nothing_to_do(r: Run, step: int) -> TrainResult | None:
    tc = r.cfg.train
    if tc.budget.schedule_done(step):
        log.info("the run is complete (%d steps): raise --epoch to train longer", step)
        return r.result("done")
    if tc.budget.at_step_cap(step):
        log.info(
            "already at step %d >= --max_steps %d: pass a larger --max_steps (0: no cap)",
            step,
            tc.budget.max_steps,
        )
        return r.result("max_steps")
    return None


def _stop_on_bad_loss(r: Run, step: int, loss: float) -> None:
    good = r.save_root / LAST
    where = f"the last good checkpoint is {good}" if good.exists() else "no checkpoint yet"
    msg = (
        f"the loss became {loss} at step {step}: training stopped ({where}); "
        "lower --lr, set --grad_clip 1.0 or use --dtype float32"
    )
    if distributed.is_main():
        raise UserError(msg)
    raise SystemExit(2)


def _log_train(r: Run, step: int, clock: _Clock, window: _LogWindow, bar: object) -> None:
    tc, ipe = r.cfg.train, r.cfg.train.budget.iters_per_epoch
    now = time.perf_counter()
    window.rate = window.steps * r.tokens_per_step / max(now - window.started, 1e-9)
    train_loss = window.loss_sum / window.steps
    elapsed = clock.elapsed()
    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{window.rate:,.0f}")  # type: ignore[attr-defined]
    log.info(
        "step %d/%d | epoch %d | loss %.4f | lr %.2e | %s tok/s | %s",
        step,
        tc.budget.total_steps,
        (step - 1) // ipe + 1,
        train_loss,
        lr_at(step - 1, tc),
        f"{window.rate:,.0f}",
        hms(elapsed),
    )
    r.observer.record(
        {
            "kind": "train",
            "step": step,
            "epoch": (step - 1) // ipe + 1,
            "tokens": step * r.tokens_per_step,
            "train_loss": train_loss,
            "lr": lr_at(step - 1, tc),
            "tokens_per_s": window.rate,
            "elapsed_s": elapsed,
        }
    )
    window.restart()


def _stop_reason(r: Run, step: int, agreed: _Agreed) -> str | None:
    tc = r.cfg.train
    if agreed.signal:
        return agreed.signal
    if tc.budget.at_step_cap(step):
        return "max_steps"
    if agreed.time_up:
        return "max_time"
    return "done" if tc.budget.schedule_done(step) else None


def _save_on_signal(r: Run, signalled: str, rate: float) -> TrainResult:
    if distributed.is_main():  # every rank got the signal; one line says so
        log.warning("%s: stopping at step %d and saving a checkpoint", signalled, r.state.step)
    save(r, is_best=False)
    log.info("checkpoint saved in %s: continue with --resume", r.save_root / LAST)
    return r.result(signalled, rate)


def _finish(r: Run, stopped: str, rate: float) -> TrainResult:
    st = r.state
    log.info(
        "finished (%s) at step %d, epoch %d; best valid NLL %.4f at step %s; checkpoints in %s",
        stopped,
        st.step,
        (st.step - 1) // r.cfg.train.budget.iters_per_epoch + 1,  # the epoch the step lines named
        st.best_valid_nll,
        st.best_step,
        r.save_root,
    )
    return r.result(stopped, rate)
