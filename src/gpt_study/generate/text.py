"""Text in, text out: prompts cleaned and encoded as training saw them, readable streamed stories.

:func:`generate` wraps the id loop of :mod:`gpt_study.generate.decode`: it cleans and encodes
prompts exactly as ``prepare`` did, warns about out-of-vocabulary words and streams readable
text as it is produced. Also the small formatters the commands print with.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpt_study.config import SampleConfig
from gpt_study.data.clean import clean_text
from gpt_study.generate.decode import generate_ids
from gpt_study.generate.window import crop_prompt, resolve_window
from gpt_study.runtime.errors import UserError

__all__ = [
    "GenerationResult",
    "PieceReader",
    "common_prefix",
    "describe",
    "encode_prompt",
    "generate",
    "pieces",
    "raw_tokens",
    "readable",
]


@dataclass
class GenerationResult:
    """Stories for a batch of prompts.

    ``prompt_ids`` is what the model was fed (cleaned, encoded, starting with ``<sot>`` unless a
    long prompt was cut to the window); ``new_ids`` what it wrote (ending with ``<eot>`` when it
    finished the story); ``texts`` the readable story, prompt included.
    """

    texts: list[str]
    prompt_ids: list[list[int]]
    new_ids: list[list[int]]
    finished: list[bool]
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The first (or only) story."""
        return self.texts[0]

    @property
    def ids(self) -> list[int]:
        """Prompt and new ids of the first (or only) story."""
        return self.prompt_ids[0] + self.new_ids[0]


def encode_prompt(tokenizer, prompt: str, window: int | None = None) -> tuple[list[int], list[str]]:
    """Ids of ``prompt`` as training saw text (cleaned, ``<sot>`` first) and any warnings.

    Out-of-vocabulary words become ``<unk>`` and are named in a warning; an empty prompt is just
    ``<sot>``; a prompt longer than ``window`` keeps its most recent tokens.
    """
    notes: list[str] = []
    text = clean_text(prompt, tokenizer.lowercase).strip() if prompt.strip() else ""
    ids = tokenizer.encode(text, sot=True) if text else [tokenizer.sot_id]
    unknown = tokenizer.unknown_words(text) if text else []
    if unknown:
        words = ", ".join(dict.fromkeys(unknown))
        notes.append(f"not in the vocabulary, read as <unk>: {words}")
    if window is not None and len(ids) > window:
        notes.append(f"prompt has {len(ids)} tokens; keeping the last {window} (the window)")
        ids = crop_prompt(ids, window)
    return ids, notes


def readable(tokenizer, ids: Sequence[int]) -> str:
    """Text of ``ids`` without ``<sot>``/``<eot>`` but with ``<unk>`` shown where it stands, so
    a story never silently loses a word (plain ``decode`` drops every special)."""
    return without_markers(
        lambda kept: tokenizer.decode(kept, skip_specials=False),
        ids,
        (tokenizer.sot_id, tokenizer.eot_id),
    )


def without_markers(
    decode: Callable[[list[int]], str], ids: Sequence[int], markers: Sequence[int | None]
) -> str:
    """The rule of a story's text, for any tokenizer's ``decode`` that keeps specials: the story
    markers left out, every other token shown (a transformers model's stories read the same way,
    :mod:`gpt_study.evaluate.hf`)."""
    return decode([i for i in ids if i not in markers])


def common_prefix(before: str, after: str) -> int:
    """Characters ``after`` shares with ``before`` from the start: decoding one token more can
    rewrite the end of a text (BPE bytes become a character), so what a token adds is
    ``after[common_prefix(before, after):]``. The one rule of both the streamed text and the
    per-token pieces below."""
    same = 0
    while same < min(len(after), len(before)) and after[same] == before[same]:
        same += 1
    return same


class _TextStream:
    """Turns a row's growing token list into readable text deltas.

    Decoding joins tokens (``could`` + ``n't`` -> ``couldn't``; BPE bytes -> characters), so a
    new token can change the end of the text. The last word is held back until the next space,
    and only text that can no longer change is passed on.
    """

    def __init__(self, tokenizer, prefix: list[int], emit: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prefix)
        self.emit = emit
        self.shown = ""

    def push(self, tok: int) -> None:
        self.ids.append(tok)
        text = readable(self.tokenizer, self.ids)
        cut = max(text.rfind(" "), text.rfind("\n"))
        stable = text[: cut + 1] if cut >= 0 else ""
        if stable.startswith(self.shown) and len(stable) > len(self.shown):
            self.emit(stable[len(self.shown) :])
            self.shown = stable

    def close(self) -> None:
        text = readable(self.tokenizer, self.ids)
        # Normally the text extends what was shown; if decoding changed it, show from the change.
        same = common_prefix(self.shown, text)
        if text[same:]:
            self.emit(text[same:])
        self.shown = text


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompt: str | Sequence[str] = "",
    sample: SampleConfig | None = None,
    window: int | None = None,
    stream: Callable[[int, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    keep: int | None = None,
) -> GenerationResult:
    """Write one story per prompt (a string, or a list of strings generated as one batch).

    ``sample`` holds the decoding settings (default: ``SampleConfig()``); pass the checkpoint's
    ``config.sample``. ``window``: the positions the model reads (default: the window it was
    trained on, for a loaded checkpoint; a longer one is refused or noted, see
    :func:`~gpt_study.generate.window.resolve_window`). ``stream(row, text)`` receives
    readable text as it is written, prompt first. ``warn`` receives warnings (default:
    :func:`warnings.warn`).
    """
    sample = sample or SampleConfig()
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise UserError("no prompts given: pass at least one (an empty string starts a story)")
    window, note = resolve_window(model, window)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{model.config.vocab_size}: use the tokenizer saved with the checkpoint"
        )
    encoded, notes = [], []
    for n, p in enumerate(prompts):
        ids, msgs = encode_prompt(tokenizer, p, window)
        encoded.append(ids)
        prefix = f"prompt {n + 1}: " if len(prompts) > 1 else "prompt: "
        notes += [prefix + m for m in msgs]
    if note is not None:
        notes.insert(0, note)
    say = warn or (lambda m: warnings.warn(m, stacklevel=3))
    for m in notes:
        say(m)

    on_token = None
    streams: list[_TextStream] = []
    if stream is not None:
        streams = [
            _TextStream(tokenizer, ids, lambda s, r=r: stream(r, s))
            for r, ids in enumerate(encoded)
        ]

        def on_token(row: int, tok: int) -> None:
            streams[row].push(tok)

    out = generate_ids(
        model,
        encoded,
        sample,
        window=window,
        eot_id=tokenizer.eot_id,
        on_token=on_token,
        keep=keep,
    )
    for s in streams:
        s.close()
    texts = [readable(tokenizer, p + n) for p, n in zip(encoded, out.new_ids, strict=True)]
    return GenerationResult(texts, encoded, out.new_ids, out.finished, notes)


def raw_tokens(tokenizer, ids: Sequence[int]) -> str:
    """The study's raw output: vocabulary entries joined by spaces, specials included."""
    return " ".join(tokenizer.id_to_token(int(i)) for i in ids)


def describe(sample: SampleConfig, window: int) -> str:
    """One line with the decoding settings, printed beside every result."""
    if sample.greedy:
        how = "greedy (the study's argmax)"
    else:
        how = (
            f"temperature {sample.temperature}, top_k {sample.top_k}, top_p {sample.top_p}, "
            f"repetition_penalty {sample.repetition_penalty}, seed {sample.seed}"
        )
    return f"{how}, max_new_tokens {sample.max_new_tokens}, window {window}"


class PieceReader:
    """The text each token adds when tokens are read in order, one token at a time.

    Decoding joins tokens (``could`` + ``n't`` -> ``couldn't``; BPE bytes into characters), so a
    piece is what the readable text gains at a token: the decoded text of the last ``context``
    tokens with it, past what they decoded to without it. The joins are local (a space rule
    between neighbours, a character of at most 4 bytes), so a short context is exact and the
    cost stays linear in the text. Specials read as their names and start a new story.
    """

    def __init__(self, tokenizer, context: int = 8) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.specials = {tokenizer.sot_id: "<sot>", tokenizer.eot_id: "<eot>"}
        self.run: list[int] = []  # ordinary tokens since the last special

    def push(self, i: int) -> str:
        i = int(i)
        if i in self.specials:
            self.run = []
            return self.specials[i]
        self.run.append(i)
        tail = self.run[-self.context :]
        decode = self.tokenizer.decode
        before = decode(tail[:-1], skip_specials=False) if len(tail) > 1 else ""
        after = decode(tail, skip_specials=False)
        return after[common_prefix(before, after) :]


def pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """:class:`PieceReader` over a whole sequence: one piece of text per token."""
    reader = PieceReader(tokenizer)
    return [reader.push(i) for i in ids]
