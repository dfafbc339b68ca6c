"""A generation streamed as it is written: a worker thread decodes, the event loop sends.

Decoding is seconds of CPU work, so it never runs on the event loop: each generation gets a
thread that calls :func:`gpt_study.generate.generate_ids` and hands each new token to the loop
(``call_soon_threadsafe`` into an :class:`asyncio.Queue`), and the response sends one JSON line
per event (NDJSON). The server keeps answering other requests meanwhile. The thread holds a
:class:`~gpt_study.serve.limits.Gate` slot until it stops computing, and stops at the next token
when the client goes away or the server shuts down.

Events, one JSON object per line::

    {"type": "start", "model", "prompt", "prompt_ids", "prompt_pieces", "settings", "window", "warnings"}
    {"type": "token", "index", "id", "token", "text"}      # text: what the story gains
    {"type": "done", "text", "ids", "new_tokens", "finished", "seconds", "tokens_per_s"}
    {"type": "error", "message"}                            # instead of done, if decoding failed
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from gpt_study.config import SampleConfig
from gpt_study.evaluate.introspect import PieceReader, pieces
from gpt_study.generate import generate_ids, readable
from gpt_study.serve.limits import Gate
from gpt_study.serve.registry import Served

__all__ = ["GENERATION_THREAD", "Generation"]

GENERATION_THREAD = "gpt-study-generate"  # the name of each generation's thread
_END = object()


class _Stopped(Exception):
    """Raised inside the decoding loop to stop it: the client left or the server is stopping."""


class Generation:
    """One streamed generation: :meth:`start` the thread, then iterate :meth:`events`."""

    def __init__(
        self,
        served: Served,
        prompt: str,
        encoded: tuple[list[int], list[str]],
        sample: SampleConfig,
        gate: Gate,
        stopping: threading.Event,
    ) -> None:
        """``encoded``: ``served.encode_prompt(prompt)``, done off the event loop."""
        self.served, self.sample, self.gate, self.stopping = served, sample, gate, stopping
        self.prompt = prompt
        self.prompt_ids, self.warnings = encoded
        self.cancel = threading.Event()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
            self.cancel.set()

    def _work(self) -> None:
        """The thread: decode, pushing events; always release the slot and end the stream."""
        tok = self.served.checkpoint.tokenizer
        reader = PieceReader(tok)
        for i in self.prompt_ids:
            reader.push(i)
        t0 = time.perf_counter()
        count = 0

        def on_token(_row: int, i: int) -> None:
            nonlocal count
            if self.cancel.is_set() or self.stopping.is_set():
                raise _Stopped
            text = reader.push(i)
            self._put(
                {
                    "type": "token",
                    "index": count,
                    "id": i,
                    "token": tok.id_to_token(i),
                    "text": text,
                }
            )
            count += 1

        try:
            out = generate_ids(
                self.served.checkpoint.model,
                [self.prompt_ids],
                self.sample,
                window=self.served.window,
                eot_id=tok.eot_id,
                on_token=on_token,
            )
            seconds = time.perf_counter() - t0
            new = out.new_ids[0]
            ids = self.prompt_ids + new
            self._put(
                {
                    "type": "done",
                    "text": readable(tok, ids),
                    "ids": ids,
                    "new_tokens": len(new),
                    "finished": out.finished[0],
                    "seconds": round(seconds, 4),
                    "tokens_per_s": round(len(new) / seconds, 2) if seconds > 0 else None,
                }
            )
        except _Stopped:
            if self.stopping.is_set():
                self._put({"type": "error", "message": "the server is stopping: try again later"})
        except Exception as e:  # noqa: BLE001 - reported to the client as the stream's last event
            self._put({"type": "error", "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            self.gate.release_threadsafe()
            self._put(_END)

    def start(self) -> None:
        threading.Thread(target=self._work, name=GENERATION_THREAD, daemon=True).start()

    def _start_event(self) -> dict[str, Any]:
        tok = self.served.checkpoint.tokenizer
        return {
            "type": "start",
            "model": self.served.name,
            "prompt": self.prompt,
            "prompt_ids": self.prompt_ids,
            "prompt_pieces": pieces(tok, self.prompt_ids),
            "settings": asdict(self.sample),
            "window": self.served.window,
            "warnings": self.warnings,
        }

    async def events(self) -> AsyncIterator[bytes]:
        """NDJSON lines; closing this iterator (the client left) stops the thread."""
        try:
            yield _line(self._start_event())
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                yield _line(item)
        finally:
            self.cancel.set()


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")
