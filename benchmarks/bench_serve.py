"""Load on ``gpt-study serve``: N concurrent streamed generations against a real server process.

Starts ``gpt-study serve`` on 127.0.0.1 (a free port) with the given checkpoint, sends
``--requests`` generate requests at once (seeded sampling, ``<eot>`` honoured, so lengths vary
as they would for users), and while they run asks ``GET /api/models`` every 50 ms to see that
the server still answers. Prints what each client saw: answered and failed requests, latency
to the first token and to the end of the story (p50, p95, max), tokens per second over the
whole load, and the ``/api/models`` latency under load.

    python benchmarks/bench_serve.py --checkpoint runs/demo/run/best
    python benchmarks/bench_serve.py --checkpoint runs/demo/run/best --requests 50 --max_concurrent 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/api/models", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit("the server did not start")


async def _one(client: httpx.AsyncClient, body: dict) -> dict:
    t0 = time.perf_counter()
    first, last = None, None
    try:
        async with client.stream("POST", "/api/generate", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "why": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                last = json.loads(line)
                if first is None and last["type"] == "token":
                    first = time.perf_counter() - t0
    except httpx.HTTPError as e:
        return {"ok": False, "why": type(e).__name__}
    ok = last is not None and last["type"] == "done"
    return {
        "ok": ok,
        "why": None if ok else str(last),
        "first": first,
        "total": time.perf_counter() - t0,
        "tokens": last.get("new_tokens", 0) if ok else 0,
    }


async def _load(url: str, n: int, new_tokens: int) -> tuple[list[dict], float, list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        bodies = [
            {"prompt": "Once upon a time", "seed": i, "max_new_tokens": new_tokens}
            for i in range(n)
        ]
        t0 = time.perf_counter()
        jobs = asyncio.gather(*(_one(client, b) for b in bodies))
        pings: list[float] = []
        while not jobs.done():
            p0 = time.perf_counter()
            await client.get("/api/models")
            pings.append(time.perf_counter() - p0)
            await asyncio.wait([jobs], timeout=0.05)
        return await jobs, time.perf_counter() - t0, pings


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--max_concurrent", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gpt_study", "serve", "--checkpoint", args.checkpoint]
    cmd += ["--port", str(port), "--threads", str(args.threads)]
    cmd += ["--max_concurrent", str(args.max_concurrent), "--max_waiting", str(args.requests)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(url, proc)
        results, wall, pings = asyncio.run(_load(url, args.requests, args.new_tokens))
    finally:
        proc.terminate()
        proc.wait(30)
    ok = [r for r in results if r["ok"]]
    failed = [r["why"] for r in results if not r["ok"]]
    totals, firsts = [r["total"] for r in ok], [r["first"] for r in ok if r["first"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    print(
        f"{args.requests} concurrent generations (at most {args.new_tokens} tokens, "
        f"{args.max_concurrent} at a time, {args.threads} torch thread(s)): "
        f"{len(ok)} answered, {len(failed)} failed {failed[:3] if failed else ''}"
    )
    print(f"wall {wall:.2f} s, {tokens} tokens, {tokens / wall:.0f} tokens/s")
    print(
        f"latency to the end: p50 {_q(totals, 50):.2f} s, p95 {_q(totals, 95):.2f} s, "
        f"max {max(totals):.2f} s; to the first token: p50 {_q(firsts, 50):.2f} s, "
        f"p95 {_q(firsts, 95):.2f} s"
    )
    print(
        f"GET /api/models under load: {len(pings)} requests, p50 {1000 * _q(pings, 50):.0f} ms, "
        f"p95 {1000 * _q(pings, 95):.0f} ms, max {1000 * max(pings):.0f} ms"
    )


if __name__ == "__main__":
    main()
