"""The whole study over the library API: prepare a corpus, train a few steps, write a story.

    python examples/minimal.py [CORPUS] [--out DIR] [--steps N]

CORPUS defaults to the shared TinyStories sample beside the checkout (../shared/data/tinystories);
everything is written under --out (default: a fresh temporary folder). The CLI does the same with
``gpt-study prepare``, ``gpt-study train --preset tiny`` and ``gpt-study generate``.
"""

import argparse
import dataclasses
import tempfile
from pathlib import Path

from gpt_study.checkpoint import load_for_inference
from gpt_study.config import DataConfig
from gpt_study.data.prepare import prepare
from gpt_study.generate import generate
from gpt_study.train.fit import fit
from gpt_study.train.setup import build_config

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("corpus", nargs="?", default=str(SAMPLE), help="a .txt file or a folder")
parser.add_argument("--out", type=Path, default=None, help="default: a fresh temporary folder")
parser.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
args = parser.parse_args()
out = args.out or Path(tempfile.mkdtemp(prefix="gpt-study-minimal-"))

# 1. corpus -> cleaned stories -> the study's word vocabulary -> uint16 token ids + meta.json
data = prepare(DataConfig(data=[args.corpus], out=str(out / "data")), progress=False)

# 2. the tiny preset, cut to a few steps (flat train flags, as on the command line)
short = {"max_steps": args.steps, "epoch": 1, "iters_per_epoch": args.steps, "eval_iters": 4}
train = {"data": str(data), "save_root": str(out / "run"), "sample_tokens": 16, **short}
result = fit(build_config("tiny", train=train))
print(f"trained {result.step} steps; best valid NLL {result.best_valid_nll:.3f}")

# 3. the best checkpoint, read back for inference, writes one story
ckpt = load_for_inference(str(out / "run" / "best"))
sample = dataclasses.replace(ckpt.config.sample, max_new_tokens=80, seed=0)
story = generate(ckpt.model, ckpt.tokenizer, "Once upon a time", sample).text
print(f"\n{story}")
