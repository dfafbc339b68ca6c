"""Tiny checkpoints and a runs folder for the serve tests (written once per session)."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from gpt_study.checkpoint import save_checkpoint
from gpt_study.config import config_to_dict
from gpt_study.config.presets import preset_config
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.model.gpt import GPT

WORDS = (
    "once upon a time there was little girl named lily . she liked to play , and the "
    "dog park ball red big saw one day with her in he his tom"
).split()
VOCAB = ["<unk>", "<sot>", "<eot>"] + WORDS + [f"w{i}" for i in range(60 - 3 - len(WORDS))]


def write_checkpoint(
    folder: Path, seed: int, vocab: list[str] = VOCAB, never_end: bool = False
) -> Path:
    """A 2-layer, 4-head GPT over ``vocab`` with a window of 16 tokens (positions up to 32);
    ``never_end``: it never writes ``<eot>``, so a generation runs to ``max_new_tokens``."""
    cfg = preset_config(
        "tiny",
        model={"vocab_size": len(vocab), "max_len": 32, "d_model": 32, "d_ff": 64, "n_layers": 2},
        train={"context_size": 16},
    )
    folder.mkdir(parents=True, exist_ok=True)
    WordTokenizer(vocab).save(folder / "tok.json")
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    with torch.no_grad():  # less flat than the init, so probabilities and attention differ
        model.head.weight.mul_(20)
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10)
        if never_end:
            model.head.bias[2] = -1e4
    return save_checkpoint(folder / "ckpt", model, cfg, folder / "tok.json", {"step": 7 + seed})


def write_runs(root: Path) -> Path:
    """Two runs: ``a`` (a save_root with config.json) and ``nested/b`` (settings in best/)."""
    cfg = preset_config("tiny")
    for name, lr in (("a", 1e-3), ("nested/b", 2e-3)):
        folder = root / name
        folder.mkdir(parents=True)
        records = [
            {"kind": "train", "step": s, "train_loss": 5.0 - s / 100, "lr": lr} for s in (10, 20)
        ]
        records.append({"kind": "valid", "step": 20, "valid_nll": 4.5, "valid_loss": 4.9})
        text = "".join(json.dumps(r) + "\n" for r in records) + '{"kind": "tr'  # a torn last line
        (folder / "metrics.jsonl").write_text(text)
        d = config_to_dict(cfg)
        d["train"]["lr"] = lr
        target = folder / "config.json" if name == "a" else folder / "best" / "config.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(d))
    (root / "not-a-run").mkdir()
    return root


@contextmanager
def running(checkpoint, runs=None, **limits):
    """The app on 127.0.0.1, on a port the OS picked; yields the base URL."""
    import uvicorn  # the serve extra: the test modules skip without it

    from gpt_study.serve.app import create_app
    from gpt_study.serve.limits import Limits
    from gpt_study.serve.registry import Models, Runs

    paths = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    models = Models.load([str(p) for p in paths], device="cpu")
    app = create_app(models, Runs(runs), Limits(**limits))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
