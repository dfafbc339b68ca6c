"""The server under load on 127.0.0.1: concurrent generations, responsiveness, clients that leave,
and Ctrl-C. A real uvicorn on a free port (in a thread, or as ``gpt-study serve``), real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[test]'")

from serve_fixtures import running, write_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("load"), seed=0, never_end=True)


async def _generate(client: httpx.AsyncClient, body: dict) -> dict:
    """One streamed generation: latency to the first token and to the end, and the events."""
    t0 = time.perf_counter()
    first, events = None, []
    async with client.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            events.append(json.loads(line))
            if first is None and events[-1]["type"] == "token":
                first = time.perf_counter() - t0
    return {"events": events, "first": first, "total": time.perf_counter() - t0}


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def test_twenty_concurrent_generations_all_answered(checkpoint, capsys):
    n, tokens = 20, 32
    with running(checkpoint, max_concurrent=2, max_waiting=32) as url:

        async def load():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                bodies = [
                    {"prompt": "once upon a time", "seed": i, "max_new_tokens": tokens}
                    for i in range(n)
                ]
                t0 = time.perf_counter()
                results = await asyncio.gather(*(_generate(client, b) for b in bodies))
                return results, time.perf_counter() - t0

        results, wall = asyncio.run(load())
    done = [r["events"][-1] for r in results]
    assert all(d["type"] == "done" and d["new_tokens"] == tokens for d in done)  # none failed
    totals = [r["total"] for r in results]
    firsts = [r["first"] for r in results]
    line = (
        f"\nserve load: {n} concurrent generations x {tokens} tokens on 127.0.0.1, "
        f"{n}/{n} answered, 0 failed, wall {wall:.2f} s ({n * tokens / wall:.0f} tokens/s); "
        f"latency p50 {_pct(totals, 50):.3f} s, p95 {_pct(totals, 95):.3f} s; "
        f"first token p50 {_pct(firsts, 50):.3f} s, p95 {_pct(firsts, 95):.3f} s"
    )
    with capsys.disabled():
        print(line)


def test_the_server_answers_while_one_request_generates(checkpoint):
    with running(checkpoint, max_new_tokens=2000) as url:

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                gen = asyncio.ensure_future(
                    _generate(client, {"prompt": "lily", "greedy": True, "max_new_tokens": 1500})
                )
                await asyncio.sleep(0.3)  # the generation is under way
                waits = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    r = await client.get("/api/models")
                    waits.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                still_running = not gen.done()
                return await gen, waits, still_running

        result, waits, still_running = asyncio.run(scenario())
    assert still_running, "the generation ended before the check: make it longer"
    assert result["events"][-1]["new_tokens"] == 1500
    assert max(waits) < 1.0, waits


def test_a_client_that_leaves_frees_its_slot(checkpoint):
    """A story too long to finish within the deadline (minutes of tokens): only the departed
    client's generation stopping gives its slot back in time."""
    n = 500_000
    with running(checkpoint, max_concurrent=1, max_waiting=0, max_new_tokens=n) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"prompt": "lily", "greedy": True, "max_new_tokens": n}
            with client.stream("POST", "/api/generate", json=body) as r:
                next(r.iter_lines())  # the start event, then hang up
            busy = client.post("/api/generate", json={"max_new_tokens": 5})
            deadline = time.monotonic() + 10
            while busy.status_code == 429 and time.monotonic() < deadline:
                assert "retry in a moment" in busy.json()["error"]
                time.sleep(0.05)
                busy = client.post("/api/generate", json={"max_new_tokens": 5})
            assert busy.status_code == 200  # the slot came back long before n tokens


def test_ctrl_c_stops_the_server_cleanly(checkpoint, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gpt_study", "serve", "--checkpoint", str(checkpoint)]
    cmd += ["--port", str(port), "--threads", "1", "--max_new_tokens", "5000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/api/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"prompt": "lily", "greedy": True, "max_new_tokens": 5000}
            with client.stream("POST", "/api/generate", json=body) as r:
                lines = r.iter_lines()
                next(lines), next(lines)  # streaming
                t0 = time.monotonic()
                proc.send_signal(signal.SIGINT)
                last = json.loads(list(lines)[-1])  # the stream ends, with a reason
                rc = proc.wait(timeout=15)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert last == {"type": "error", "message": "the server is stopping: try again later"}
    assert rc == 0 and err.strip().endswith("gpt-study serve: stopped"), err
    assert "Traceback" not in err and "ERROR" not in err and "terminate" not in err, err
    assert stopped_in < 5
