"""What each inspection route computes, as plain functions from a served model to JSON-ready dicts.

The routes in :mod:`gpt_study.serve.app` only parse, bound and schedule; the numbers come from
here, on top of :mod:`gpt_study.evaluate.introspect`, so they can be tested (and scripted) without HTTP.
Probabilities are rounded to 6 decimals: a page has no use for more and the answers stay small.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt_study.evaluate.heldout import rates
from gpt_study.evaluate.introspect import (
    PieceReader,
    ids_bytes,
    pieces,
    query_window,
    score_ids,
    trace,
)
from gpt_study.serve.registry import Served

__all__ = [
    "BadRequest",
    "Text",
    "attention_view",
    "compare_view",
    "read_text",
    "same_vocabulary",
    "tokens_view",
]


class BadRequest(Exception):
    """A request the server understood but cannot serve; ``status`` is its 4xx code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _r(x: float) -> float:
    return round(float(x), 6)


class Text:
    """A text as one model reads it: its ids, and the UTF-8 bytes bits per byte divides by
    (None: ids whose bytes are not known, see :func:`ids_bytes`)."""

    def __init__(self, ids: list[int], n_bytes: int | None, stories: int) -> None:
        self.ids, self.bytes, self.stories = ids, n_bytes, stories


def read_text(served: Served, text: str | None, ids: list[int] | None) -> Text:
    """The request's ``text`` (encoded as prepare stores stories) or its ``ids`` (checked)."""
    tok = served.checkpoint.tokenizer
    if ids is not None:
        bad = [i for i in ids if not 0 <= i < tok.vocab_size]
        if bad:
            raise BadRequest(f"token id {bad[0]} is out of range: ids are 0..{tok.vocab_size - 1}")
        if len(ids) < 2:
            raise BadRequest("ids: send at least 2 token ids (the first is only context)")
        return Text(list(ids), ids_bytes(tok, ids), max(1, ids.count(tok.sot_id)))
    got, n_bytes, stories = served.encode_text(text or "")
    if not got:
        raise BadRequest("text is empty: paste a story (or send ids)")
    return Text(got, n_bytes, stories)


def _token(tok, i: int, piece: str) -> dict[str, Any]:
    return {"id": int(i), "token": tok.id_to_token(int(i)), "text": piece}


def _alternatives(tok, ids: torch.Tensor, probs: torch.Tensor) -> list[dict[str, Any]]:
    return [
        {"id": int(i), "token": tok.id_to_token(int(i)), "p": _r(p)}
        for i, p in zip(ids.tolist(), probs.tolist(), strict=True)
    ]


def _summary(nll_sum: float, targets: int, n_bytes: int | None) -> dict[str, Any]:
    r = rates(nll_sum, targets, n_bytes or 0)
    return {
        "targets": targets,
        "nll": _r(r.nll),
        "ppl": _r(r.ppl),
        "bytes": n_bytes,
        "bits_per_byte": None if r.bpb is None else _r(r.bpb),
    }


def tokens_view(served: Served, text: Text, top_k: int) -> dict[str, Any]:
    """Each token with the probability the model gave it and its ``top_k`` likeliest rivals."""
    tok = served.checkpoint.tokenizer
    ids = text.ids
    scores = score_ids(served.checkpoint.model, ids, served.window, top_k)
    shown = pieces(tok, ids)
    tokens = [{**_token(tok, ids[0], shown[0]), "p": None, "nll": None, "top": []}]
    for n in range(len(ids) - 1):
        tokens.append(
            {
                **_token(tok, ids[n + 1], shown[n + 1]),
                "p": _r(scores.prob[n]),
                "nll": _r(scores.nll[n]),
                "top": _alternatives(tok, scores.top_ids[n], scores.top_probs[n]),
            }
        )
    return {
        "model": served.name,
        "window": served.window,
        "stories": text.stories,
        "tokens": tokens,
        "summary": _summary(float(scores.nll.sum()), len(ids) - 1, text.bytes),
    }


def attention_view(served: Served, ids: list[int], position: int, top_k: int) -> dict[str, Any]:
    """For token ``position``: its attention to every earlier token per layer and head, the
    heads' mean, and the logit lens there (what each layer would predict as the next token)."""
    if not 0 <= position < len(ids):
        raise BadRequest(
            f"position {position} is out of range: the text has tokens 0..{len(ids) - 1}"
        )
    tok = served.checkpoint.tokenizer
    start = query_window(position, served.window)
    window = ids[start : position + 1]
    tr = trace(served.checkpoint.model, window)
    q = len(window) - 1
    weights = tr.attention[:, :, q, : q + 1].float()  # (L, nh, q + 1)
    nxt = ids[position + 1] if position + 1 < len(ids) else None
    lens = []
    probs = torch.softmax(tr.lens[:, q].float(), dim=-1)  # (L + 1, V)
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
    for layer in range(probs.size(0)):
        lens.append(
            {
                "layer": layer,  # 0: the embeddings; L: the model's own prediction
                "top": _alternatives(tok, top.indices[layer], top.values[layer]),
                "p_next": None if nxt is None else _r(probs[layer, nxt]),
            }
        )
    reader = PieceReader(tok)
    shown = [reader.push(i) for i in ids[: position + 1]][start:]
    after = None if nxt is None else _token(tok, nxt, reader.push(nxt))
    return {
        "model": served.name,
        "position": position,
        "window_start": start,
        "tokens": [_token(tok, i, s) for i, s in zip(window, shown, strict=True)],
        "next": after,
        "layers": int(weights.size(0)),
        "heads": int(weights.size(1)),
        "weights": [[[_r(w) for w in head] for head in layer] for layer in weights.tolist()],
        "mean": [[_r(w) for w in layer] for layer in weights.mean(1).tolist()],
        "lens": lens,
    }


def same_vocabulary(a: Served, b: Served) -> bool:
    """Whether two models split text into the same tokens with the same ids."""
    ta, tb = a.checkpoint.tokenizer, b.checkpoint.tokenizer
    if ta.kind != tb.kind or ta.vocab_size != tb.vocab_size or ta.lowercase != tb.lowercase:
        return False
    return all(ta.id_to_token(i) == tb.id_to_token(i) for i in range(ta.vocab_size))


def compare_view(a: Served, b: Served, text: str | None, ids: list[int] | None) -> dict[str, Any]:
    """Two models on one text: per-token loss difference (b minus a) and each one's bits per byte.

    With different vocabularies tokens do not line up, so only the per-byte numbers are given.
    """
    same = same_vocabulary(a, b)
    if ids is not None and not same:
        raise BadRequest("ids: the two models have different vocabularies; send text instead")
    texts = [read_text(m, text, ids) for m in (a, b)]
    scores = [
        score_ids(m.checkpoint.model, t.ids, m.window, 1)
        for m, t in zip((a, b), texts, strict=True)
    ]
    out: dict[str, Any] = {
        "models": [a.name, b.name],
        "same_vocabulary": same,
        "summary": [
            _summary(float(s.nll.sum()), len(t.ids) - 1, t.bytes)
            for s, t in zip(scores, texts, strict=True)
        ],
        "tokens": None,
        "eot": None,
    }
    if not same:
        return out
    tok = a.checkpoint.tokenizer
    t_ids = texts[0].ids
    diff = scores[1].nll - scores[0].nll  # (T-1,): > 0 where a is better
    shown = pieces(tok, t_ids)
    out["tokens"] = [{**_token(tok, t_ids[0], shown[0]), "nll": None, "diff": None}] + [
        {
            **_token(tok, t_ids[n + 1], shown[n + 1]),
            "nll": [_r(scores[0].nll[n]), _r(scores[1].nll[n])],
            "diff": _r(diff[n]),
        }
        for n in range(len(t_ids) - 1)
    ]
    at_eot = torch.tensor([i == tok.eot_id for i in t_ids[1:]])
    if bool(at_eot.any()):
        out["eot"] = {
            "count": int(at_eot.sum()),
            "nll": [_r(scores[0].nll[at_eot].mean()), _r(scores[1].nll[at_eot].mean())],
            "diff": _r(diff[at_eot].mean()),
        }
    return out
