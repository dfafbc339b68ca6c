"""The JSON bodies the API accepts, as pydantic models (FastAPI validates them before a route runs).

Unknown fields are refused (a typo such as ``temprature`` would otherwise be silently ignored).
Bounds that depend on the server's flags (:class:`~gpt_study.serve.limits.Limits`) are checked by
:func:`check_text` and the routes, so the messages can name the flag. Models are referred to by
index or name, never by path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpt_study.serve.limits import Limits
from gpt_study.serve.views import BadRequest

__all__ = [
    "AttentionRequest",
    "CompareRequest",
    "GenerateRequest",
    "TokensRequest",
    "check_text",
]

ModelRef = int | str


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        """Every string of every body (a prompt, a text, a model's name) must be UTF-8: a lone
        surrogate that JSON can carry is refused here, not by the tokenizer mid-request."""
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(
                        f"holds a character that is not valid text ({v[e.start]!r} at "
                        f"{e.start}, a lone surrogate): send UTF-8 text"
                    ) from None
        return value


class GenerateRequest(_Body):
    """``POST /api/generate``: a prompt and any sampling settings (unset: the checkpoint's)."""

    model: ModelRef = 0
    prompt: str = ""
    greedy: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None


class _TextBody(_Body):
    """A text to read, or the token ids of one (e.g. a generated story, exactly as written)."""

    text: str | None = None
    ids: list[int] | None = None


class TokensRequest(_TextBody):
    """``POST /api/tokens``: every token's probability and its likeliest alternatives."""

    model: ModelRef = 0
    top_k: int = Field(default=5, ge=1)


class AttentionRequest(_TextBody):
    """``POST /api/attention``: attention and logit lens at token ``position`` of the text."""

    model: ModelRef = 0
    position: int
    top_k: int = Field(default=5, ge=1)


class CompareRequest(_TextBody):
    """``POST /api/compare``: two models (index or name) on one text."""

    models: tuple[ModelRef, ModelRef] = (0, 1)


def check_text(body: _TextBody, limits: Limits) -> None:
    """Exactly one of ``text`` and ``ids``, each within the server's bounds (413 past them)."""
    if (body.text is None) == (body.ids is None):
        raise BadRequest("send either text or ids (token ids), not both or neither")
    if body.text is not None and len(body.text) > limits.max_text_chars:
        raise BadRequest(
            f"text has {len(body.text)} characters; this server reads at most "
            f"{limits.max_text_chars} (--max_text_chars)",
            status=413,
        )
    if body.ids is not None and len(body.ids) > limits.max_ids:
        raise BadRequest(
            f"ids has {len(body.ids)} tokens; this server reads at most {limits.max_ids} "
            "(--max_ids)",
            status=413,
        )
    top_k = getattr(body, "top_k", 1)
    if top_k > limits.max_top_k:
        raise BadRequest(f"top_k {top_k} is over {limits.max_top_k}, the most this server shows")
