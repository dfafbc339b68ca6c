"""``gpt-study demo``: the whole study in one command, on the shared TinyStories sample.

It runs the same commands a user would type, printing each one first, so the demo doubles as a
tour: prepare (bpe) -> train (the ``cpu`` preset, its schedule fitted to the time budget by
``--fit_epochs``) -> plot -> evaluate -> generate. Without the shared sample it falls
back to the Hugging Face Hub dataset.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from gpt_study.cli import main
from gpt_study.config import DataConfig
from gpt_study.config.presets import PREPARED_WITH, PRESETS, preset_config
from gpt_study.data.sources import resolve_sources
from gpt_study.runs import check_save_root
from gpt_study.runtime.errors import UserError

SAMPLE = Path("shared") / "data" / "tinystories"
PROMPTS = (
    "once upon a time, there was a little girl named lily",
    "tom and his dog went to the park",
)


def find_sample() -> Path | None:
    """``../shared/data/tinystories`` beside the checkout (from the cwd or from this package)."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        candidate = root.parent / SAMPLE
        if (candidate / "train.txt").exists():
            return candidate
    return None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", nargs="+", help="corpus to use (default: the shared sample, else the Hub)"
    )
    parser.add_argument(
        "--out", default="runs/demo", help="folder for the prepared data and the run"
    )
    parser.add_argument(
        "--minutes",
        "--max_time",
        dest="minutes",
        type=float,
        default=10.0,
        help="training time budget in minutes (train's --max_time)",
    )
    parser.add_argument(
        "--preset", default="cpu", help=f"model / training preset: {', '.join(PRESETS)}"
    )
    parser.add_argument(
        "--tokenizer", default="bpe", help="prepare's --tokenizer (default: bpe, lossless)"
    )
    parser.add_argument(
        "--vocab_size",
        type=int,
        help="prepare's --vocab_size (default: what the preset was measured on, "
        f"{PREPARED_WITH['cpu']['vocab_size']:,} bpe entries for cpu; else the tokenizer's "
        "default)",
    )
    parser.add_argument(
        "--epoch",
        type=int,
        default=0,
        help="epochs to train, the learning-rate schedule's length (default 0: as many as "
        "--minutes hold at the speed of the first epochs, train's --fit_epochs)",
    )
    parser.add_argument("--max_steps", type=int, default=0, help="cap on training steps (0: none)")
    parser.add_argument("--resume", action="store_true", help="continue the demo's run")


def _step(argv: list[str]) -> None:
    print(f"\n$ gpt-study {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(code)


def vocab_size(args: argparse.Namespace) -> int | None:
    """``--vocab_size``, else the one the preset was measured on with this tokenizer."""
    measured = PREPARED_WITH.get(args.preset, {})
    if args.vocab_size or measured.get("tokenizer") != args.tokenizer:
        return args.vocab_size
    return measured.get("vocab_size")


def check_flags(args: argparse.Namespace, data: list[str] | None) -> None:
    """Every flag checked by the library's own rules before the first command writes anything:
    the settings prepare and train will get, the corpus paths, the output folder and its run."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass a folder")
    DataConfig(
        data=data or [],
        tokenizer=args.tokenizer,
        vocab_size=vocab_size(args),
        out=str(out / "data"),
    )
    train: dict[str, float] = {"max_time": args.minutes, "max_steps": args.max_steps}
    train |= {"epoch": args.epoch, "fit_epochs": False} if args.epoch else {"fit_epochs": True}
    preset_config(args.preset, train=train)
    if data:
        resolve_sources(data)
    check_save_root(out / "run", args.resume, [out / "data"])  # before prepare writes its folder


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = args.data
    if not data:
        sample = find_sample()
        data = [str(sample)] if sample else None
        print(
            f"demo: using {'the shared sample at ' + str(sample) if sample else 'the Hugging Face Hub'}"
        )
    check_flags(args, data)
    prepared = out / "data"
    run_dir = out / "run"
    source = ["--data", *data] if data else []
    vocab = ["--vocab_size", str(n)] if (n := vocab_size(args)) else []
    _step(["prepare", *source, "--out", str(prepared), "--tokenizer", args.tokenizer, *vocab])
    train = ["train", "--data", str(prepared), "--preset", args.preset, "--save_root", str(run_dir)]
    train += ["--max_time", str(args.minutes)]
    train += ["--epoch", str(args.epoch), "--no-fit_epochs"] if args.epoch else ["--fit_epochs"]
    if args.max_steps:
        train += ["--max_steps", str(args.max_steps)]
    if args.resume:
        train.append("--resume")
    _step(train)
    _step(["plot", "--save_root", str(run_dir)])
    best = run_dir / "best"
    _step(["evaluate", "--checkpoint", str(best), "--data", str(prepared)])
    prompts = [x for p in PROMPTS for x in ("--prompt", p)]
    _step(["generate", "--checkpoint", str(best), *prompts, "--seed", "0"])
    print(f"\ndemo: done. Loss curves: {run_dir / 'loss.png'}; checkpoints: {run_dir}")
    return 0
