"""The README.md of an exported folder: how to load it, what it holds, how exact it is."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from gpt_study.config import GPTConfig
from gpt_study.export.hf import LAYOUTS, REMOTE_FILE
from gpt_study.export.layouts import zero_filled

__all__ = ["readme"]


def _tokenizer_text(result: Any) -> str:
    if result.tokenizer == "hf":
        how = (
            "the imported model's own `tokenizer.json` as it came (its normalizer, its ids), "
            "`<sot>` and `<eot>` its own beginning and end tokens: exact."
        )
    elif result.tokenizer == "bpe":
        how = (
            "gpt-study's byte-level BPE as it is (same merges, `<unk>` `<sot>` `<eot>` at ids "
            "0, 1, 2): exact. A special's name typed in a text is plain text, as in gpt-study "
            "(`split_special_tokens`)."
        )
    else:
        how = (
            "gpt-study's word vocabulary (spaCy's English tokenizer) as the nearest `tokenizers` "
            "pipeline: spaCy's affix rules and exceptions as regular expressions, a `WordLevel` "
            "model with `<unk>`. It is not exact: spaCy is a program, not a table."
        )
    if result.exact_share is None:
        share = f"Share of stories whose ids equal gpt-study's: {result.exact_where}."
    else:
        share = (
            f"Its ids equal gpt-study's on **{result.exact_share:.2%}** of {result.exact_where}."
        )
    if result.tokenizer == "hf":
        return f"{how} {share} `tok(text).input_ids` is gpt-study's `encode(text, sot=True)`."
    return (
        f"{how} {share} Text is normalized as gpt-study cleans it (whitespace runs to one space"
        + (", lowercased" if result.lowercase else "")
        + "; ftfy's repairs are not in the pipeline), and `<sot>` is put first, as every "
        "gpt-study prompt starts: `tok(text).input_ids` is gpt-study's "
        "`encode(text, sot=True)`."
    )


def readme(result: Any, ckpt: Any) -> str:
    """The folder's README (``result``: an :class:`~gpt_study.export.folder.ExportResult`)."""
    cfg = ckpt.config
    c = result.checked
    remote = result.remote_code
    layout = next(x for x in LAYOUTS if x.name == result.layout)
    trust = ", trust_remote_code=True" if remote else ""
    if remote and layout.remote is not None:
        ours, what = layout.remote, layout.remote.what(ckpt.model)
        model_text = (
            f"{what[0].upper()}{what[1:]}, which no stock transformers class has, so "
            f"the model class is `{ours.model_class}` in `{REMOTE_FILE}`: {ours.detail(layout.stock_class)} "
            "`config.json` names it in `auto_map`; load it with `trust_remote_code=True`. "
            "transformers 5 reads `config.json` when it loads the tokenizer as well, and asks "
            "before it runs the folder's code: pass `trust_remote_code=True` there too."
        )
    elif cfg.model.head_bias:
        model_text = (
            f"The output layer's bias is all zeros, so the stock `{layout.stock_class}` computes "
            "the same logits; no code of ours is needed."
        )
    else:
        model_text = f"The stock `{layout.stock_class}` computes it; no code of ours is needed."
    docs = {f.name: f.metadata["doc"].split(" (")[0] for f in fields(GPTConfig)}  # its help
    lacks = [docs[n] for n in zero_filled(cfg.model, layout, remote)]
    if lacks:
        model_text += (
            f" It was trained without {' or '.join(lacks)}; the class always has them, so they "
            "are written as zeros, which compute the same."
        )
    slide = (
        "keeps its rotary cache and drops the oldest keys (a rotary key depends only on its "
        "distance to the query)"
        if cfg.model.positions == "rope"
        else "re-encodes the most recent tokens from position 0"
    )
    window = ckpt.window
    return f"""# gpt-study model, exported for transformers

Exported by gpt-study from `{ckpt.path}` (step {ckpt.state.get("step")}).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(folder{trust})
tok = AutoTokenizer.from_pretrained(folder{trust})
ids = tok("once upon a time", return_tensors="pt").input_ids  # <sot> first
out = model.generate(ids, max_new_tokens=100)  # generation_config.json: the checkpoint's sampling
print(tok.decode(out[0], skip_special_tokens=True))
```

## The model

{layout.summary} (`{result.layout}`); {cfg.model.n_layers} layers,
width {cfg.model.d_model}, {cfg.model.n_heads} heads, {cfg.model.max_len} positions,
{cfg.model.vocab_size} tokens. {model_text}

Checked at export with transformers {c.version}: logits max abs difference
{c.logits_diff:.1e} from gpt-study's (fp32, {c.positions} positions); greedy decoding from `<sot>`,
{c.greedy_tokens} tokens: the same tokens (an export that differs is refused).

The model was trained on windows of {window} tokens. gpt-study generates past them by sliding
the window (it {slide}); transformers' `generate`
does not slide, so up to {window} tokens the two agree, and past {cfg.model.max_len} positions
transformers cannot go on. gpt-study's greedy decoding (`--greedy`) takes the argmax and
nothing else; transformers' greedy still applies the `repetition_penalty` of
`generation_config.json`, so pass `do_sample=False, repetition_penalty=1.0` for the same tokens.

## The tokenizer

{_tokenizer_text(result)}

## Files

- `model.safetensors`, `config.json`: weights and architecture{f"; `{REMOTE_FILE}`: the model class" if remote else ""}
- `tokenizer.json`, `tokenizer_config.json`: the tokenizer; `<sot>` bos, `<eot>` eos and pad
- `generation_config.json`: the checkpoint's decoding settings, `<eot>` ends a story
  (gpt-study's `--seed` has no place there: seed torch yourself)
- `gpt_study_export.json`: where this came from and what was measured
"""
