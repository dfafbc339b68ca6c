"""Flags shared by the commands that read a checkpoint (``generate``, ``evaluate``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from gpt_study.checkpoint import Checkpoint, load_for_inference
from gpt_study.cli.flags import dataclass_overrides
from gpt_study.config import SampleConfig
from gpt_study.config.fields import flat_fields, thread_count
from gpt_study.config.train import TrainConfig
from gpt_study.evaluate.stories import STORY_PROTOCOL, StoryProtocol
from gpt_study.generate.weights import QUANTIZE, quantize
from gpt_study.generate.window import resolve_window
from gpt_study.runtime import device as runtime

_TRAIN_DTYPES = flat_fields(TrainConfig)["dtype"][1].metadata["choices"]


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of the commands that run a checkpoint for inference."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=_TRAIN_DTYPES,  # the same names as training's --dtype, read from its field
        help="auto: bfloat16 on a CUDA GPU that has it, float32 elsewhere (CPU, MPS)",
    )


def add_checkpoint_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--checkpoint",
        required=required,
        help="checkpoint folder written by train (e.g. runs/gpt/best)",
    )
    add_reading_args(parser)


def add_reading_args(parser: argparse.ArgumentParser) -> None:
    """How a command reads a checkpoint's model (every command that runs one, serve included):
    device and dtype, ``--quantize``, ``--window`` and ``--threads``."""
    add_device_args(parser)
    parser.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE,
        help="int8: int8 weight-only linear layers, a quarter of the bytes each token reads "
        "(batch-1 decoding about 3x faster on a CPU; held-out NLL within 0.5%%, see docs/export.md)",
    )
    parser.add_argument(
        "--window",
        "--context_size",  # the study's name, kept so its commands read true
        dest="window",
        type=int,
        default=None,
        help="positions the model reads, in tokens (default: the window it was trained on; "
        "longer is refused for learned positions, allowed with a note for rotary ones)",
    )
    add_threads_arg(parser)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads`` of the commands that run a model without training it: the same values as
    train's (N, or auto, also spelled 0), but auto cannot time training steps here, so it keeps
    torch's own count."""
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N|auto",
        help="CPU threads for torch: auto (the default, or 0) keeps torch's own count, one per "
        "core; N pins N (1 is much faster when other work shares the cores: decoding runs many "
        "small operations)",
    )


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only when stderr is a terminal)",
    )


def open_checkpoint(args: argparse.Namespace) -> Checkpoint:
    """Apply ``--threads`` (for the rest of the command), load ``--checkpoint`` for inference
    and apply ``--quantize``."""
    runtime.set_threads(args.threads)
    ckpt = load_for_inference(args.checkpoint, args.device, args.dtype)
    quantize(ckpt.model, getattr(args, "quantize", "none"))
    return ckpt


def window(args: argparse.Namespace, ckpt: Checkpoint) -> int:
    """``--window`` (or ``--context_size``), else the window the checkpoint was trained on,
    checked by :func:`gpt_study.generate.window.resolve_window`; its note goes to stderr."""
    w, note = resolve_window(ckpt.model, args.window)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    return w


PROTOCOL_FLAGS = ("max_new_tokens", "seed")
"""SampleConfig fields the story protocol owns: :func:`add_story_args` declares them, so a
command that also takes the sampling flags skips these (a checkpoint's values are not used)."""


def add_story_args(parser: argparse.ArgumentParser) -> None:
    """The story protocol's flags, shared by ``evaluate`` and ``compare``: each left out keeps
    the protocol's value (:data:`gpt_study.evaluate.stories.STORY_PROTOCOL`), never a checkpoint's."""
    p = STORY_PROTOCOL
    for flag, value, what in (
        ("--samples", p.samples_per_opening, "stories per opening"),
        ("--max_new_tokens", p.max_new_tokens, "most tokens per story"),
        ("--seed", p.seed, "seed of the first batch of stories"),
    ):
        parser.add_argument(
            flag, type=int, default=None, help=f"{what} (default: the story protocol's {value})"
        )


def story_protocol(args: argparse.Namespace) -> StoryProtocol:
    """The story protocol with the flags of :func:`add_story_args` that were given."""
    return STORY_PROTOCOL.overridden(
        samples_per_opening=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed
    )


def sample_settings(base: SampleConfig, args: argparse.Namespace) -> SampleConfig:
    """The checkpoint's sampling settings with the flags the user gave on top."""
    return SampleConfig(**{**asdict(base), **dataclass_overrides(args, SampleConfig)})
