"""Presets: named starting points, each a set of overrides of the config defaults (the study's).

``seed`` is the study's model and recipe exactly; the others are measured alternatives. Any flag
overrides a preset. :func:`preset_config` is the one function that turns a preset plus overrides
into a :class:`~gpt_study.config.Config`.
"""

from __future__ import annotations

from typing import Any

from gpt_study.config import Config, config_from_dict
from gpt_study.runtime.errors import UserError

# Presets: overrides of the dataclass defaults (which are the study's). Any flag overrides a preset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The study's model and recipe, exactly.
    "seed": {},
    # Small enough to learn recognisable stories in ~10 minutes on a 2-core CPU (see docs/train.md):
    # 2.2M parameters at the sample's 5,229 words; 2,000 steps of 16 x 128 tokens. On the shared
    # sample, batch 16 reached valid NLL 3.74 after 0.82M tokens where batch 32 had 3.83 after
    # 1.05M (two runs, not a controlled comparison), so the schedule takes more, smaller steps.
    "tiny": {
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
            "batch_size": 16,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "warmup_steps": 100,
            "min_lr": 2e-4,
            "weight_decay": 0.1,
            # Decay on weight matrices and embeddings only, as when the preset was measured: at
            # 0.1, decaying LayerNorm gains toward 0 would only fight the normalisation.
            "decay_all": False,
            "study_rows": False,  # windows of 128 inputs at any offset, as when it was measured
            "epoch": 10,
            "iters_per_epoch": 200,
            "eval_iters": 20,
            "print_interval": 50,
            "sample_tokens": 200,
            "sp_weight": 1.0,
            "best_by": "nll",  # the honest number picks best/
            "dtype": "auto",  # bf16 where it is native, as when the preset was measured
        },
    },
    # A CPU recipe from the model options (RoPE, RMSNorm, SwiGLU, tied embeddings, no biases)
    # and dropout for a corpus smaller than the budget: the sample holds under a million tokens,
    # so 15 minutes see it about 15 times. Chosen with benchmarks/bench_quality.py
    # (docs/quality.md): at half the steps, width 128 x 4 layers (0.975 bits/byte) beat width
    # 192 x 6 (1.027); sized for 15 minutes at ~17k tokens/s on a quiet 2-core AMD EPYC;
    # sp_weight 2.0 because it made stories end (ex-02, docs/compare.md). Prepare --tokenizer bpe.
    "cpu": {
        "model": {
            "max_len": 128,
            "d_model": 128,
            "d_ff": 512,
            "n_layers": 4,
            "n_heads": 4,
            "attention_drop": 0.0,
            "residual_drop": 0.1,
            "embedding_drop": 0.0,
            "positions": "rope",
            "norm": "rmsnorm",
            "mlp": "swiglu",
            "tie_embeddings": True,
            "bias": False,
            "head_bias": False,
        },
        "train": {
            "context_size": 128,
            "batch_size": 32,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "warmup_steps": 100,
            "min_lr": 1e-4,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "epoch": 14,
            "iters_per_epoch": 250,
            "eval_iters": 20,
            "print_interval": 50,
            "sample_tokens": 200,
            "sp_weight": 2.0,
            "decay_all": False,
            "study_rows": False,
            "best_by": "nll",
            "dtype": "auto",
        },
    },
}


def preset_config(name: str, **overrides: dict[str, Any]) -> Config:
    """A preset's config, with ``overrides`` per section, e.g. ``train={"lr": 1e-3}``."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    d: dict[str, dict[str, Any]] = {k: dict(v) for k, v in PRESETS[name].items()}
    for section, values in overrides.items():
        d.setdefault(section, {}).update(values)
    d["preset"] = name  # type: ignore[assignment]
    return config_from_dict(d, f"preset {name}")
