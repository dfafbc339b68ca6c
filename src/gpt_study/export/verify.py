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

from gpt_study.config import EOT_ID, SOT_ID, Config, SampleConfig
from gpt_study.data.clean import clean_text
from gpt_study.data.prepare.ids import Holdout
from gpt_study.data.sources import Source, iter_stories
from gpt_study.generate.decode import generate_ids
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = [
    "LOGITS_TOLERANCE",
    "Checked",
    "check_folder",
    "greedy_config",
    "held_out_texts",
    "require_transformers",
]

LOGITS_TOLERANCE = 1e-4  # max abs difference of fp32 logits an export may have
INSTALL = 'pip install -e ".[export]"'


def require_transformers() -> Any:
    """The transformers module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"export needs transformers: {INSTALL}") from None
    return transformers


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


def _load(folder: Path, remote: bool) -> tuple[Any, Any]:
    transformers = require_transformers()
    major = int(transformers.__version__.split(".")[0])
    dtype = {"dtype" if major >= 5 else "torch_dtype": torch.float32}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=remote, **dtype
    ).eval()
    # transformers 5 reads config.json for a tokenizer too, and asks before it runs our code.
    tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    return model, tok


def greedy_config(transformers: Any, max_new_tokens: int) -> Any:
    """gpt-study's greedy decoding in transformers: argmax, no repetition penalty (the folder's
    generation_config.json carries the checkpoint's, which transformers' greedy would apply)."""
    return transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.0,
        bos_token_id=SOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=EOT_ID,
    )


@torch.inference_mode()
def check_folder(
    folder: Path, model: GPT, tokenizer: Any, remote: bool, context: int, texts: list[str]
) -> Checked:
    """Load ``folder`` with the auto classes; compare logits on every position, greedy tokens
    from ``<sot>`` (within the window ``context``, where gpt-study does not slide) and the ids
    of ``texts``."""
    transformers = require_transformers()
    hf, hf_tok = _load(folder, remote)
    if next(model.parameters()).dtype != torch.float32:
        raise UserError("the export check compares fp32 logits: load the checkpoint in float32")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    T = model.config.max_len
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)  # (2, T)
    idx[:, 0] = SOT_ID
    diff = (hf(idx).logits.float() - model(idx)).abs().max().item()

    n = min(32, context - 1)
    ours = generate_ids(
        model, [[SOT_ID]], SampleConfig(greedy=True, max_new_tokens=n), context, eot_id=EOT_ID
    ).new_ids[0]
    theirs = hf.generate(
        torch.tensor([[SOT_ID]]),
        attention_mask=torch.ones(1, 1, dtype=torch.long),
        generation_config=greedy_config(transformers, n),
    )[0, 1:].tolist()
    same_ids = sum(hf_tok(t).input_ids == tokenizer.encode(t, sot=True) for t in texts)
    return Checked(
        transformers.__version__,
        diff,
        idx.numel(),
        theirs == ours,
        len(ours),
        same_ids,
        len(texts),
    )


def _sources(meta: dict[str, Any]) -> tuple[list[dict[str, Any]], float | None]:
    """The sources of the valid split, and the share held out of train when valid came from it."""
    sources = [s for s in meta.get("sources", []) if isinstance(s, dict)]
    valid = [s for s in sources if s.get("split") == "valid"]
    if valid:
        return valid, None
    return [s for s in sources if s.get("split") == "train"], meta.get("settings", {}).get(
        "valid_fraction"
    )


def held_out_texts(cfg: Config, lowercase: bool, limit: int = 2000) -> tuple[list[str], str]:
    """Up to ``limit`` cleaned stories of the valid split of the checkpoint's prepared folder,
    read from its sources as ``prepare`` read them; or none, and why not."""
    folder = Path(cfg.train.data) if cfg.train.data else None
    if folder is None or not (folder / "meta.json").exists():
        return [], f"not measured: the checkpoint's data folder {folder} is not there"
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return [], f"not measured: {folder}/meta.json cannot be read"
    sources, fraction = _sources(meta)
    paths = [Path(s["path"]) for s in sources if s.get("path")]
    if not paths or len(paths) != len(sources) or not all(p.exists() for p in paths):
        return [], f"not measured: the valid stories of {folder} are not on this machine"
    min_chars = int(meta.get("settings", {}).get("min_chars") or 0)
    holdout = Holdout(fraction) if fraction else None
    texts: list[str] = []
    for path in paths:
        for raw in iter_stories(Source("valid" if holdout is None else "train", path)):
            text = clean_text(raw, lowercase)
            if len(text) < min_chars:
                continue  # prepare dropped it
            mask = holdout.valid_mask(1) if holdout is not None else None
            if mask is not None and not mask[0]:
                continue  # a train story: prepare held out only every n-th kept one
            texts.append(text)
            if len(texts) == limit:
                break
    if not texts:
        return [], f"not measured: no valid stories found in the sources of {folder}"
    where = f"{len(texts)} valid stories of {folder}"
    return texts, where + (" (held out of train)" if holdout is not None else "")
