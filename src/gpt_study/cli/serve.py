"""``gpt-study serve``: checkpoints and runs -> :func:`gpt_study.serve.app.create_app` -> uvicorn.

The web stack is an optional extra, imported only here and only when the command runs, so the
rest of gpt-study never needs it; without it the command says how to install it in one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
import threading
from dataclasses import fields

from gpt_study.cli.common import add_reading_args
from gpt_study.runtime import device as runtime
from gpt_study.runtime.errors import UserError, install
from gpt_study.serve.limits import Limits, own_names
from gpt_study.serve.stream import GENERATION_THREAD

LIMIT_HELP = {
    "max_prompt_chars": "longest prompt accepted, in characters",
    "max_new_tokens": "most tokens one generation may write",
    "max_text_chars": "longest text the token, attention and compare views read",
    "max_ids": "most token ids a request may send instead of a text",
    "max_top_k": "most alternatives shown per token",
    "max_concurrent": "requests computing at once (generations and views, each)",
    "max_waiting": "requests queued behind those before the server answers 429",
    "max_body_bytes": "largest request body",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="checkpoint folder to serve (e.g. runs/gpt/best); repeat to compare models",
    )
    parser.add_argument(
        "--runs", default=None, help="folder whose training runs (metrics.jsonl) the page shows"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it "
        "to the network)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_reading_args(parser)  # --quantize and --window apply to every model served
    defaults = Limits()
    for f in fields(Limits):
        parser.add_argument(
            f"--{f.name}",
            type=int,
            default=getattr(defaults, f.name),
            help=f"{LIMIT_HELP[f.name]} (default {getattr(defaults, f.name)})",
        )


def _need_web_stack() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serve needs {' and '.join(missing)}: {install('serve')}")


def _check_address(host: str, port: int) -> None:
    """Fail before loading models if the address cannot be listened on (in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        why = e.strerror or str(e)
        raise UserError(
            f"cannot listen on {host}:{port} ({why}): pick another --port or --host"
        ) from None


def run(args: argparse.Namespace) -> int:
    _need_web_stack()
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is out of range: use a value in [0, 65535]")
    if not args.checkpoint and not args.runs:
        raise UserError("nothing to serve: give --checkpoint CK (repeatable) and/or --runs DIR")
    _check_address(args.host, args.port)
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    import uvicorn  # the optional extra, checked above

    from gpt_study.serve.app import create_app
    from gpt_study.serve.registry import Models, Runs

    runtime.set_threads(args.threads)
    runs = Runs(args.runs)
    models = Models.load(args.checkpoint, args.device, args.dtype, args.quantize, args.window)
    for s in models.served:
        if s.note is not None:
            print(f"note: {s.name}: {s.note}", file=sys.stderr)
    hosts = own_names(args.host)  # None: reachable from elsewhere, as asked
    if hosts is None:
        print(_exposure_warning(args.host, args.port), file=sys.stderr)
    app = create_app(models, runs, limits, hosts=hosts)
    names = ", ".join(s.name for s in models.served) or "none"
    print(f"serving models: {names}; runs: {args.runs or 'none'}", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=3,  # a stream still open after Ctrl-C is closed after this
    )
    try:
        _StoppingServer(config, app.state.stopping).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has stopped
        pass
    for t in threading.enumerate():  # let generations leave torch before the interpreter goes
        if t.name == GENERATION_THREAD:
            t.join(timeout=5)
    print("gpt-study serve: stopped", file=sys.stderr)
    return 0


def _exposure_warning(host: str, port: int) -> str:
    """One line that says who can reach the page when it listens beyond this machine."""
    who = "every machine that can reach this one" if host in ("0.0.0.0", "::", "") else host
    return (
        f"gpt-study serve: warning: --host {host} lets {who} reach the page on port {port}, "
        "with no login: anyone there can run the models; use --host 127.0.0.1 to keep it local"
    )


def _StoppingServer(config, stopping: threading.Event):
    """A uvicorn server that, on Ctrl-C, first tells running generations to stop.

    uvicorn waits for open responses before it stops; a story being streamed could run for
    minutes, so the signal handler also sets ``stopping``: each generation ends at its next
    token with an error event, its stream closes, and the server exits at once.
    """
    import uvicorn  # the optional extra, checked by run()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    return Server(config)
