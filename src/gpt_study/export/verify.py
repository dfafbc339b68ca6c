"""The checks an exported folder must pass before it replaces anything: an independent
implementation (transformers) computing the same numbers as gpt-study.

transformers is imported inside these functions only: it is an optional extra
(``pip install -e ".[export]"``), and nothing else in gpt-study needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt_study.config import Config, SampleConfig
from gpt_study.data.text import source_stories
from gpt_study.export.hf import special_token_ids
from gpt_study.generate.decode import generate_ids
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import TRANSFORMERS_INSTALL, UserError, require, weights_dtype

__all__ = [
    "LOGITS_TOLERANCE",
    "Checked",
    "check_folder",
    "compare",
    "greedy_config",
    "held_out_texts",
    "load_options",
    "require_transformers",
]

LOGITS_TOLERANCE = 1e-4  # max abs difference of fp32 logits an export may have


def require_transformers() -> Any:
    """The transformers module, or a one-line error saying how to install it."""
    return require("transformers", "export", TRANSFORMERS_INSTALL)


@dataclass
class Checked:
    """What transformers computed from the folder, against gpt-study."""

    version: str
    logits_diff: float  # max abs difference, fp32
    positions: int  # positions compared (batch x length)
    greedy_equal: bool
    greedy_tokens: int
    ids_equal: int  # texts whose token ids AutoTokenizer gives exactly as gpt-study
    ids_texts: int

    def disagreement(self) -> str | None:
        """Why the two do not compute one model, or None: the rule an export and an import are
        both held to (logits within :data:`LOGITS_TOLERANCE`, the same greedy tokens; a NaN
        fails). Token ids are reported, not held: a word vocabulary's spaCy splits have no
        exact equivalent in transformers."""
        if self.logits_diff <= LOGITS_TOLERANCE and self.greedy_equal:
            return None
        return f"logits max abs difference {self.logits_diff:.2e}, greedy tokens " + (
            "equal" if self.greedy_equal else "differ"
        )


def load_options(transformers: Any) -> dict[str, Any]:
    """``from_pretrained``'s keyword for fp32 weights, as this transformers spells it."""
    return weights_dtype(transformers, torch.float32)


def _load(folder: Path, remote: bool) -> tuple[Any, Any]:
    transformers = require_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=remote, **load_options(transformers)
    ).eval()
    # transformers 5 reads config.json for a tokenizer too, and asks before it runs our code.
    tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    return model, tok


def greedy_config(transformers: Any, max_new_tokens: int, tokenizer: Any = None) -> Any:
    """gpt-study's greedy decoding in transformers: argmax, no repetition penalty (the folder's
    generation_config.json carries the checkpoint's, which transformers' greedy would apply),
    the end of a story where ``tokenizer`` (default: gpt-study's own kinds) puts it."""
    return transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        **SampleConfig(greedy=True).for_transformers(),
        **special_token_ids(tokenizer),
    )


@torch.inference_mode()
def check_folder(
    folder: Path, model: GPT, tokenizer: Any, remote: bool, context: int, texts: list[str]
) -> Checked:
    """Load ``folder`` with the auto classes and :func:`compare` it with ``model``; the
    folder's tokenizer must give ``tokenizer.encode(text, sot=True)`` (it puts ``<sot>`` first)."""
    hf, hf_tok = _load(folder, remote)
    return compare(
        hf,
        model,
        tokenizer,
        context,
        texts,
        lambda t: hf_tok(t).input_ids == tokenizer.encode(t, sot=True),
    )


MAX_POSITIONS = 1024  # positions per row compared: all of them, up to GPT-2's context


@torch.inference_mode()
def compare(
    hf: Any,
    model: GPT,
    tokenizer: Any,
    context: int,
    texts: list[str],
    same_ids: Any,
) -> Checked:
    """A transformers model ``hf`` against gpt-study's ``model``: logits on every position of
    two random rows (up to :data:`MAX_POSITIONS`), greedy tokens from ``<sot>`` (within the
    window ``context``, where gpt-study does not slide; ``<sot>`` and ``<eot>`` where
    ``tokenizer`` puts them) and, through ``same_ids(text)``, the token ids of ``texts``. Export
    and import both check with it."""
    transformers = require_transformers()
    if next(model.parameters()).dtype != torch.float32:
        raise UserError("the check compares fp32 logits: load the checkpoint in float32")
    model.eval()
    hf.eval()
    sot, eot = tokenizer.sot_id, tokenizer.eot_id
    gen = torch.Generator().manual_seed(0)
    T = min(model.config.max_len, MAX_POSITIONS)
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)  # (2, T)
    idx[:, 0] = sot
    diff = (hf(idx).logits.float() - model(idx)).abs().max().item()

    n = min(32, context - 1)
    ours = generate_ids(
        model, [[sot]], SampleConfig(greedy=True, max_new_tokens=n), context, eot_id=eot
    ).new_ids[0]
    theirs = hf.generate(
        torch.tensor([[sot]]),
        attention_mask=torch.ones(1, 1, dtype=torch.long),
        generation_config=greedy_config(transformers, n, tokenizer),
    )[0, 1:].tolist()
    return Checked(
        transformers.__version__,
        diff,
        idx.numel(),
        theirs == ours,
        len(ours),
        sum(bool(same_ids(t)) for t in texts),
        len(texts),
    )


def held_out_texts(cfg: Config, lowercase: bool, limit: int = 2000) -> tuple[list[str], str]:
    """Up to ``limit`` cleaned stories of the valid split of the checkpoint's prepared folder,
    read from its sources as ``prepare`` read them (:func:`gpt_study.data.text.source_stories`);
    or none, and why not."""
    folder = cfg.prepared_folder()
    if not (folder / "meta.json").exists():
        return [], f"not measured: the checkpoint's data folder {folder} is not there"
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return [], f"not measured: {folder}/meta.json cannot be read"
    texts = source_stories(meta, "valid", lowercase, limit)
    if texts is None:
        return [], f"not measured: the valid stories of {folder} are not on this machine"
    held = not any(
        isinstance(s, dict) and s.get("split") == "valid" for s in meta.get("sources", [])
    )
    if not texts:
        return [], f"not measured: no valid stories found in the sources of {folder}"
    where = f"{len(texts)} valid stories of {folder}"
    return texts, where + (" (held out of train)" if held else "")
