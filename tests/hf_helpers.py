"""A gpt-study model as transformers computes it, in memory (no folder, no check of its own):
the export's layout, config and weights loaded into the stock class or into our class of the
layout from ``modeling_gpt_study.py``. Imported as ``from hf_helpers import``."""

from __future__ import annotations

from typing import Any

import pytest


def hf_model_of(model: Any) -> Any:
    """The transformers model ``export`` would write for ``model`` (a GPT), in eval mode."""
    transformers = pytest.importorskip("transformers", reason="the export extra")
    from gpt_study.export import modeling_gpt_study as ours
    from gpt_study.export.hf import choose_layout, hf_config, hf_weights, needs_remote_code

    layout = choose_layout(model.config)
    remote = needs_remote_code(model, layout)
    conf = hf_config(model, layout, remote)
    conf.pop("auto_map", None)
    if remote:
        config = getattr(ours, layout.remote.config_class)(**conf)
        hf = getattr(ours, layout.remote.model_class)(config)
    else:
        hf_conf = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
        hf = transformers.AutoModelForCausalLM.from_config(hf_conf)
    weights = hf_weights(model, layout, remote)
    for new, old in layout.renamed.items():  # what from_pretrained renames on loading a folder
        weights = {
            new + k.removeprefix(old) if k.startswith(old) else k: v for k, v in weights.items()
        }
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    assert not unexpected and all("rotary" in k or "lm_head" in k for k in missing), missing
    hf.tie_weights()
    return hf.eval()
