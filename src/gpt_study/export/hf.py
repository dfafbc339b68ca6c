"""The export direction of :mod:`~gpt_study.export.layouts`: which layout a model fits, and its
``config.json``, ``generation_config.json`` and weights under transformers' names.

Only stock transformers classes are used where one computes exactly what our model does; where
none does (a GPT-2 whose output layer has a bias, a Llama with value embeddings), the layout's
small class of ours (:class:`~gpt_study.export.remote.Remote`) is written into the folder beside
the weights (transformers' ``auto_map``, loaded with ``trust_remote_code=True``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from gpt_study.config import EOT_ID, SOT_ID, GPTConfig, SampleConfig
from gpt_study.export.layouts import (
    REMOTE_FILE,
    Layout,
    option_difference,
    to_hf_config,
    to_hf_weights,
)
from gpt_study.export.tables import LAYOUTS
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = [
    "LAYOUTS",
    "REMOTE_FILE",
    "Layout",
    "choose_layout",
    "generation_config",
    "hf_config",
    "hf_weights",
    "needs_remote_code",
]


def choose_layout(cfg: GPTConfig) -> Layout:
    """The first layout that computes exactly what ``cfg``'s model computes."""
    defaults = type(cfg)()  # the study's values of every field, options added later included
    why = []
    for layout in LAYOUTS:
        unknown = [
            f.name
            for f in fields(cfg)
            if f.name not in layout.understood and getattr(cfg, f.name) != getattr(defaults, f.name)
        ]
        reason = f"it does not know {', '.join(unknown)}" if unknown else None
        reason = reason or option_difference(cfg, layout)
        if reason is None:
            return layout
        why.append(f"{layout.name}: {reason}")
    raise UserError(f"no transformers layout fits this model ({'; '.join(why)}): not exported")


def needs_remote_code(model: GPT, layout: Layout) -> bool:
    """Whether ``model`` needs ``layout``'s class of ours: it computes something the stock
    class would not (a head bias that is not all zeros, value embeddings, capped logits)."""
    return layout.remote is not None and layout.remote.needed(model)


def hf_weights(model: GPT, layout: Layout, remote: bool) -> dict[str, torch.Tensor]:
    """Our weights under the layout's names; every one of ours is used exactly once."""
    ours = {k: v.detach().cpu() for k, v in model.own_weights().items()}  # transformers re-ties
    if not remote:
        ours.pop("head.bias", None)  # all zeros (needs_remote_code): the stock class computes it
    return to_hf_weights(ours, layout, model.config, remote)


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """bos, eos and pad: ``<sot>``, ``<eot>`` and ``<eot>`` where ``tokenizer`` puts them (gpt-study's
    own kinds: 1, 2, 2; an imported one: its model's own)."""
    sot = SOT_ID if tokenizer is None else tokenizer.sot_id
    eot = EOT_ID if tokenizer is None else tokenizer.eot_id
    return {"bos_token_id": sot, "eos_token_id": eot, "pad_token_id": eot}


def hf_config(model: GPT, layout: Layout, remote: bool, tokenizer: Any = None) -> dict[str, Any]:
    """``config.json``: the layout's fields, the specials, and the class that loads it."""
    ours = layout.remote if remote else None
    cfg: dict[str, Any] = {
        "architectures": [ours.model_class if ours else layout.stock_class],
        "model_type": ours.model_type if ours else layout.model_type,
        **to_hf_config(model.config, layout),
        **special_token_ids(tokenizer),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    if ours:
        cfg["auto_map"] = {
            "AutoConfig": f"{REMOTE_FILE.removesuffix('.py')}.{ours.config_class}",
            "AutoModelForCausalLM": f"{REMOTE_FILE.removesuffix('.py')}.{ours.model_class}",
        }
    return cfg


def generation_config(sample: SampleConfig, tokenizer: Any = None) -> dict[str, Any]:
    """``generation_config.json``: the checkpoint's decoding settings
    (:meth:`~gpt_study.config.SampleConfig.for_transformers`), ``<eot>`` as the end."""
    return {
        **special_token_ids(tokenizer),
        "max_new_tokens": sample.max_new_tokens,
        **sample.for_transformers(),
    }
