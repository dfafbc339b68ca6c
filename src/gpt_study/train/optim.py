"""The optimizer and the learning-rate schedule (a pure function of the step, so it needs no
saved state of its own).

``--optimizer adamw`` (the study) moves every parameter with AdamW. ``--optimizer muon`` moves the
blocks' weight matrices (attention and feed-forward) with Muon (``torch.optim.Muon``: momentum
orthogonalized by a Newton-Schulz iteration, Jordan et al. 2024) and everything else (embeddings,
output layer, biases, LayerNorms) with AdamW, as Muon's authors prescribe: an orthogonalized
update suits a matrix that maps one hidden space to another, not a lookup table or a gain.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt_study.config import TrainConfig
from gpt_study.config.learning import DECAY_SHAPES
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.plan import resolve_fused_adamw


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    ``constant`` (the study): ``--lr`` throughout, after an optional linear warmup.
    ``cosine``: linear warmup over ``--warmup_steps``, then a cosine from ``--lr`` down to
    ``--min_lr`` at the last step of ``--epoch x --iters_per_epoch`` (budgets such as
    ``--max_steps`` cut the run short but do not reshape the schedule, so a resumed run follows
    the same curve). ``linear``: the same warmup, then a straight line to ``--min_lr`` at that
    step (with ``--min_lr 0``, the decay to zero of Bergsma et al. 2025, "Straight to Zero").
    ``wsd``: the same warmup, ``--lr`` until the last ``--cooldown`` of the decay (a fifth unless
    told), then 1 - sqrt down to ``--min_lr`` at that step
    (:data:`~gpt_study.config.learning.DECAY_SHAPES`).
    """
    s, lr = cfg.schedule, cfg.optim.lr
    if s.warmup_steps and step < s.warmup_steps:
        return lr * (step + 1) / s.warmup_steps
    shape = DECAY_SHAPES[s.lr_schedule]
    if shape is None:
        return lr
    total = cfg.budget.total_steps
    span = max(1, total - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr + (lr - s.min_lr) * shape(progress, s.cooldown)


def dropout_on(step: int, cfg: TrainConfig) -> bool:
    """Whether optimizer step ``step`` (0-based) trains with the model's dropout:
    ``--dropout_from f`` leaves it off for the first f of the schedule's steps (the fitted
    schedule's, under ``--fit_epochs``)."""
    return step >= cfg.schedule.dropout_from * cfg.budget.total_steps


def _decay(params: list[torch.nn.Parameter], cfg: TrainConfig) -> float:
    """Weight decay of a group: ``--weight_decay`` for weight matrices and embeddings (dim >= 2),
    and for the 1-D biases and LayerNorm parameters only with ``--decay_all`` (the study)."""
    o = cfg.optim
    return o.weight_decay if o.decay_all or all(p.dim() >= 2 for p in params) else 0.0


class MuonWithAdamW:
    """Muon for some parameters and AdamW for the others, stepped together as one optimizer.

    It has what the loop and checkpoints use of an optimizer (``param_groups``, ``step``,
    ``zero_grad``, ``state_dict``, ``load_state_dict``), so they need not know there are two.
    Muon's groups carry ``lr_scale`` (``--muon_lr / --lr``): the loop sets every group's rate to
    the schedule's times that, so both follow the same warmup and decay.
    """

    kind = "muon"

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.muon.load_state_dict(saved["muon"])
        self.adamw.load_state_dict(saved["adamw"])


Optimizer = torch.optim.Optimizer | MuonWithAdamW


def muon_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters Muon moves: the 2-D weight matrices inside the decoder blocks."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and p.dim() == 2 and name.startswith("blocks.")
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> Optimizer:
    """The optimizer ``--optimizer`` names: AdamW (:func:`make_adamw`) over every parameter, or
    :class:`MuonWithAdamW` with Muon on :func:`muon_params` and AdamW on the rest.

    Muon's matrices decay by ``--weight_decay x --lr / --muon_lr`` per unit of its rate, so
    ``--weight_decay`` shrinks them by as much per step as AdamW would (both decays are
    decoupled: the weights are multiplied by ``1 - rate x decay``).
    """
    if cfg.optim.optimizer == "adamw":
        return make_adamw(list(model.parameters()), cfg, device)
    muon_cls = getattr(torch.optim, "Muon", None)
    if muon_cls is None:
        raise UserError(
            f"--optimizer muon needs torch.optim.Muon (torch 2.9 or later), and this is torch "
            f"{torch.__version__}: upgrade torch or use --optimizer adamw"
        )
    matrices = muon_params(model)
    chosen = {id(p) for p in matrices}
    muon = muon_cls(
        [{"params": matrices, **_muon_settings(cfg)}], lr=cfg.optim.muon_lr, nesterov=True
    )
    rest = [p for p in model.parameters() if id(p) not in chosen]
    return MuonWithAdamW(muon, make_adamw(rest, cfg, device))


def _muon_settings(cfg: TrainConfig) -> dict[str, float]:
    """Muon's per-group settings from the config (a resumed run takes them from it too)."""
    o = cfg.optim
    return {
        "lr_scale": o.muon_lr / o.lr,
        "momentum": o.muon_momentum,
        "weight_decay": o.weight_decay * o.lr / o.muon_lr,
    }


def make_adamw(
    params: list[torch.nn.Parameter], cfg: TrainConfig, device: str
) -> torch.optim.AdamW:
    """AdamW with the study's settings, in two groups: weight matrices and embeddings, then the
    1-D biases and LayerNorm parameters.

    The study decays every parameter (``--decay_all``, the default); ``--no-decay_all`` leaves
    the second group undecayed (decaying a gain toward 0 only fights the normalisation). The two
    groups exist either way, so a checkpoint resumes under either setting. The fused kernel as
    ``--fused_adamw`` resolves for ``device`` (:func:`gpt_study.runtime.plan.resolve_fused_adamw`:
    ``auto``, wherever torch has one); unfused, torch's default (``foreach``) implementation.
    """
    params = [p for p in params if p.requires_grad]
    split = [[p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]]
    groups = [{"params": ps, "weight_decay": _decay(ps, cfg)} for ps in split]
    kw = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.lr_betas), eps=cfg.optim.eps)
    if resolve_fused_adamw(cfg.runtime.fused_adamw, device):
        return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, **kw)


def load_optimizer_state(optimizer: Optimizer, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Restore a saved optimizer state; the config, not the checkpoint, sets hyperparameters
    (weight decay per group as :func:`make_optimizer` sets it).

    A state saved by the other ``--optimizer`` cannot continue: refused with one line.
    """
    was = "muon" if "muon" in saved else "adamw"
    if was != cfg.optim.optimizer:
        raise UserError(
            f"the checkpoint's optimizer state is {was}'s and --optimizer is {cfg.optim.optimizer}: "
            f"resume with --optimizer {was}, or start a new run"
        )
    optimizer.load_state_dict(saved)
    adamw = optimizer.adamw if isinstance(optimizer, MuonWithAdamW) else optimizer
    for g in adamw.param_groups:
        g.update(
            betas=tuple(cfg.optim.lr_betas),
            eps=cfg.optim.eps,
            weight_decay=_decay(g["params"], cfg),
        )
    if isinstance(optimizer, MuonWithAdamW):
        for g in optimizer.muon.param_groups:
            g.update(_muon_settings(cfg))
