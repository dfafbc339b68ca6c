"""Bounds on what one request may ask of the server, and the gate that bounds how many run at once.

A model on a laptop CPU is a shared, slow resource: one request must not hold it for minutes
(prompt length, new tokens, text length are capped), the number of requests computing at once
is capped (the rest wait in a short queue; past it the answer is 429, not a pile-up that makes
everyone time out), and a request body is read only up to a size (413), so a client cannot make
the server buffer gigabytes. Every refusal says which bound and its value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from dataclasses import dataclass

from gpt_study.config.fields import AT_LEAST_1, NON_NEGATIVE, check_ranges

__all__ = ["BodyLimit", "Busy", "Gate", "HostCheck", "Limits", "is_loopback", "own_names"]


@dataclass(frozen=True)
class Limits:
    """The server's bounds (``gpt-study serve`` flags of the same names)."""

    max_prompt_chars: int = 2_000  # a story opening
    max_new_tokens: int = 1_024  # per generation (the window slides past the context)
    max_text_chars: int = 20_000  # a pasted text for the token, attention and compare views
    max_ids: int = 4_096  # token ids sent instead of a text
    max_top_k: int = 50  # alternatives shown per token
    max_concurrent: int = 2  # requests computing at once (generation and views each)
    max_waiting: int = 32  # requests queued behind them before 429
    max_body_bytes: int = 1 << 20  # a request body

    def __post_init__(self) -> None:
        ranges = {f: AT_LEAST_1 for f in self.__dataclass_fields__}
        ranges["max_waiting"] = NON_NEGATIVE  # 0: refuse at once when every slot is busy
        check_ranges(self, ranges)


class Busy(Exception):
    """Every slot and the queue are full: the client should retry later (HTTP 429)."""


class Gate:
    """At most ``running`` holders at once, at most ``waiting`` queued; beyond that, :class:`Busy`.

    ``async with gate.slot():`` around work held in a thread. A slot can also be handed to a
    worker thread and released from there (:meth:`acquire` / :meth:`release`), so a streamed
    generation holds its slot exactly as long as it computes, even if the client went away.
    """

    def __init__(self, running: int, waiting: int, what: str) -> None:
        self.running, self.waiting, self.what = running, waiting, what
        self._sem = asyncio.Semaphore(running)
        self._queued = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> None:
        if self._sem.locked() and self._queued >= self.waiting:
            raise Busy(
                f"busy: {self.running} {self.what} running and {self.waiting} waiting "
                "(the server's --max_concurrent and --max_waiting); retry in a moment"
            )
        self._loop = asyncio.get_running_loop()
        self._queued += 1
        try:
            await self._sem.acquire()
        finally:
            self._queued -= 1

    def release(self) -> None:
        self._sem.release()

    def release_threadsafe(self) -> None:
        """Release from a worker thread (the semaphore belongs to the event loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._sem.release)
        except RuntimeError:  # the loop closed meanwhile: nothing is waiting any more
            pass

    def slot(self) -> _Slot:
        return _Slot(self)


class _Slot:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def __aenter__(self) -> None:
        await self.gate.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.gate.release()


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, before parsing them.

    Checks ``Content-Length`` first and also counts the bytes of a body sent without one.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        too_big = False

        async def counted():
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _TooBig
            return message

        try:
            await self.app(scope, counted, send)
        except _TooBig:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        await _send_error(
            send, 413, f"request body over {self.max_bytes} bytes: send a shorter text"
        )


async def _send_error(send, status: int, error: str) -> None:
    """An ASGI middleware's refusal: ``{"error": ...}`` as JSON with ``status``."""
    body = json.dumps({"error": error}).encode()
    start = {"type": "http.response.start", "status": status}
    await send({**start, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class _TooBig(Exception):
    pass


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def own_names(host: str) -> list[str] | None:
    """The ``Host`` names a server listening on ``host`` answers: where only this machine can
    reach it, its own names (the address it listens on, ``localhost``, ``127.0.0.1``, ``::1``),
    so that a web page elsewhere cannot reach it by pointing its own domain at this machine (DNS
    rebinding); None (any name) for a server reachable from elsewhere, as it was asked to be."""
    if not is_loopback(host):
        return None
    return sorted({host.strip("[]"), "localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8000`` gives ``::1``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: answer 400 to any ``Host`` header but ``names`` (see :func:`own_names`;
    Starlette's own check cuts an IPv6 ``[::1]:8000`` at its first colon)."""

    def __init__(self, app, names: list[str]) -> None:
        self.app, self.names = app, {n.lower() for n in names}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(header).lower() not in self.names:
                await _send_error(send, 400, f"host {header!r} is not this server's")
                return
        await self.app(scope, receive, send)
