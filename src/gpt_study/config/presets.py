"""Presets: named starting points, each a set of overrides of the config defaults (the study's).

``seed`` is the study's model and recipe exactly; the others are measured alternatives. Any flag
overrides a preset. :func:`preset_config` is the one function that turns a preset plus overrides
into a :class:`~gpt_study.config.Config`.
"""

from __future__ import annotations

from typing import Any

from gpt_study.config import Config, DataConfig, TrainConfig, config_from_dict
from gpt_study.config.fields import flatten
from gpt_study.runtime.errors import UserError

# The shape and recipe that tiny and cpu share: a 4-layer, 128-wide model without dropout, trained
# with a short warmup and cosine decay at a high peak rate, AdamW decaying the matrices only (at
# 0.1, decaying norm gains toward 0 would only fight the normalisation), windows at any offset and
# best/ picked by NLL, the honest number. Why these values: docs/train.md, "How the presets were
# chosen".
SMALL: dict[str, dict[str, Any]] = {
    "model": {
        "max_len": 128,
        "d_model": 128,
        "d_ff": 512,
        "n_layers": 4,
        "n_heads": 4,
        "attention_drop": 0.0,
        "residual_drop": 0.0,
        "embedding_drop": 0.0,
    },
    "train": {
        "context_size": 128,
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 100,
        "weight_decay": 0.1,
        "decay_all": False,
        "study_rows": False,
        "eval_iters": 20,
        "print_interval": 50,
        "sample_tokens": 200,
        "best_by": "nll",
        "dtype": "auto",  # bf16 where it is native, as when the presets were measured
    },
}


def _small(model: dict[str, Any], train: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A preset derived from :data:`SMALL`: its own settings on top of the shared ones."""
    return {"model": {**SMALL["model"], **model}, "train": {**SMALL["train"], **train}}


# Presets: overrides of the dataclass defaults (which are the study's). Any flag overrides a preset.
# Settings go by their flat names, the flags' (``lr``, not ``optim.lr``).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The study's model and recipe, exactly.
    "seed": {},
    # Recognisable stories in about 10 minutes on a 2-core CPU, with the study's word tokenizer.
    "tiny": _small(
        model={},
        train={
            "batch_size": 16,  # more, smaller steps: they learned faster per token here
            "min_lr": 2e-4,
            "epoch": 10,
            "iters_per_epoch": 200,
            "sp_weight": 1.0,
        },
    ),
    # The best measured 15-minute CPU recipe: the model options, a little dropout for a corpus
    # seen about 15 times, sp_weight 2.0 so that stories end, no label smoothing (it costs NLL by
    # construction), weight decay 0.3 (the sample is memorised; docs/quality.md, "Round three"),
    # under --max_time a schedule fitted to the budget, and the step compiled (its cold compile
    # pays back within a few epochs; docs/train.md, "torch.compile"). Prepared as PREPARED_WITH.
    "cpu": _small(
        model={
            "residual_drop": 0.1,
            # none on the embeddings: 0.1 was better side by side at 7,250 steps (two seeds) but
            # 0.0042 worse at the 5,500 that 15 minutes give here (docs/quality.md, "Round sixteen")
            "positions": "rope",
            "norm": "rmsnorm",
            "mlp": "swiglu",
            "tie_embeddings": True,
            "bias": False,
            "head_bias": False,
            "max_len": 512,
        },
        train={
            # AdamW: Muon was 0.007 better side by side but a tie at this budget on two threads and
            # 0.005 worse in the demo's 10 minutes (docs/quality.md, "Round ten")
            # 4 rows of 512 tokens: the 2,048 tokens a step of 16 rows of 128 (twice the steps of
            # 32 rows: 0.004 better), in windows that start cold a quarter as often. 256 tokens
            # were 0.003 and 0.015 better than 128, and 512 0.012 and 0.004 better than 256, side
            # by side at equal minutes (two seeds each) for 8% and 11% fewer tokens/s (quality.md,
            # "Round fourteen" and "Round fifteen")
            "context_size": 512,
            "batch_size": 4,
            # A second-moment average over about 700 steps instead of 34: at 2,048 tokens a step,
            # the half-life in tokens that Marek et al. 2025 keep across batch sizes; it also
            # takes a higher peak rate. Together 0.005 and 0.010 better side by side (two seeds;
            # quality.md, "Round thirteen")
            "lr_betas": (0.9, 0.999),
            "lr": 3e-3,
            "story_starts": 0.25,  # a quarter of the rows from a story's start: 0.007 better
            # the peak, then 1 - sqrt down over the last 40%: wsd with a fifth was 0.0043 and
            # 0.0037 better than the cosine side by side at equal steps, and 40% 0.0037 and
            # 0.0043 better than a fifth (two seeds each; quality.md, "Round nineteen", "Round
            # twenty"); a --max_time cut half an epoch short also costs it half as much
            "lr_schedule": "wsd",
            "cooldown": 0.4,
            "min_lr": 1e-4,
            "grad_clip": 1.0,
            "epoch": 28,  # 7,000 steps of 2,048 tokens without --max_time
            "iters_per_epoch": 250,
            "fit_epochs": True,
            "sp_weight": 2.0,
            "label_smoothing": 0.0,
            "weight_decay": 0.3,  # 0.1, 0.6 and 1.0 ended worse at the full budget
            "compile": True,  # eager where there is no C++ compiler (runtime.plan)
        },
    ),
}


# The prepared folder a preset was measured on: prepare's --tokenizer and --vocab_size (the demo
# and bench_quality prepare with them). 8,192 entries learned faster early but ended worse at the
# full budget (docs/quality.md, "Round two").
PREPARED_WITH: dict[str, dict[str, Any]] = {"cpu": {"tokenizer": "bpe", "vocab_size": 4096}}


def prepared_vocab(name: str) -> int:
    """The vocabulary size a preset's model has on the folder it is prepared with
    (:data:`PREPARED_WITH`, else prepare's defaults: the study's word vocabulary of 30,000 on the
    full corpus): what the benchmarks time it at when no prepared folder says otherwise."""
    size = DataConfig(**PREPARED_WITH.get(name, {})).vocab_size
    assert size is not None  # DataConfig fills in each tokenizer's default
    return size


def preset_config(name: str, **overrides: dict[str, Any]) -> Config:
    """A preset's config, with ``overrides`` per section, e.g. ``train={"lr": 1e-3}`` (train's
    settings by flat name, or in their sections: ``train={"optim": {"lr": 1e-3}}``)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    d: dict[str, dict[str, Any]] = {k: dict(v) for k, v in PRESETS[name].items()}
    for section, values in overrides.items():
        flat = flatten(TrainConfig, values) if section == "train" else values
        d.setdefault(section, {}).update(flat)
    d["preset"] = name  # type: ignore[assignment]
    return config_from_dict(d, f"preset {name}")
