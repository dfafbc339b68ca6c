"""Quality per CPU-minute: train named recipes for the same wall-clock budget, one after another,
and compare valid bits per byte on the whole valid split.

    python benchmarks/bench_quality.py                          # every recipe, 15 minutes each
    python benchmarks/bench_quality.py --minutes 5 --recipes tiny cpu
    python benchmarks/bench_quality.py --recipes cpu cpu-muon cpu-ve         # arms at full budget
    python benchmarks/bench_quality.py --recipes --ablation --seeds 1 2 --minutes 0 --epochs 2 \
        --parallel 2 --out runs/ablation     # cpu and each option back, two runs at a time

Each recipe is a gpt-study config: a preset plus flags, on a tokenizer (bits per byte is compared
only for lossless ones, so ``word`` is not among them). Every run is a fresh ``gpt-study train``
process with ``--max_time``, then ``gpt-study evaluate`` on its best checkpoint (whole valid split,
and the stories of the one story protocol, :mod:`gpt_study.evaluate.stories`: up to 512 tokens, the same
seeds as evaluate and compare, so a recipe's ``<eot>`` share is its model's). Reported: bits per byte, the share of stories that end with
``<eot>``, repeated 4-grams, tokens seen and tokens/s (a slow run on a shared machine shows as
such), parameters and training FLOPs. One PNG draws valid bits per byte against minutes for all.

``nanogpt-cpu`` is nanoGPT's documented CPU recipe (byte level, 4 layers, 4 heads, width 128, block
64, batch 12, lr 1e-3 cosine to 1e-4 over 25,000 iterations, no dropout, tied weights, no biases)
expressed as a gpt-study config on the byte tokenizer; ``study`` the study's model and recipe
(preset ``seed``) on bpe; ``tiny`` today's CPU preset; ``cpu`` the preset this benchmark chose, on
the bpe vocabulary it was measured on (``PREPARED_WITH``: 4,096 entries). With ``--ablation`` each
option of the ``cpu`` recipe is switched back to the study's choice, one at a time, at the same
budget; with ``--candidates`` each option it does not use is added. ``--epochs`` shortens every
recipe's schedule (the cosine still ends at its last step) and ``--minutes 0`` lifts the time cap,
so an ablation can compare equal numbers of steps; ``--parallel 2`` runs two at a time, one thread
each (on two cores that doubles the runs per hour; every run then shares the machine alike, and
tokens/s shows it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories"
sys.path.insert(0, str(ROOT / "src"))

from gpt_study.config import load_config  # noqa: E402
from gpt_study.config.presets import PREPARED_WITH  # noqa: E402
from gpt_study.evaluate.stories import STORY_PROTOCOL, share_text, story_metrics  # noqa: E402
from gpt_study.model.gpt import GPT, flops_per_token  # noqa: E402
from gpt_study.runs import read_metrics  # noqa: E402

NANOGPT = [
    "--preset", "tiny", "--n_layers", "4", "--n_heads", "4", "--d_model", "128", "--d_ff", "512",
    "--context_size", "64", "--max_len", "64", "--batch_size", "12", "--lr", "1e-3",
    "--lr_schedule", "cosine", "--warmup_steps", "100", "--min_lr", "1e-4", "--lr_betas", "0.9",
    "0.99", "--weight_decay", "0.1", "--attention_drop", "0", "--residual_drop", "0",
    "--embedding_drop", "0", "--tie_embeddings", "--no-bias", "--no-head_bias", "--epoch", "50",
    "--iters_per_epoch", "500", "--eval_iters", "20",
]  # fmt: skip
RECIPES: dict[str, tuple[str, list[str]]] = {
    "nanogpt-cpu": ("byte", NANOGPT),
    "study": ("bpe", ["--preset", "seed", "--iters_per_epoch", "100", "--eval_iters", "10"]),
    "tiny": ("bpe", ["--preset", "tiny"]),
    "cpu": (f"prepare:--vocab_size {PREPARED_WITH['cpu']['vocab_size']}", ["--preset", "cpu"]),
}
# --ablation: each option of the cpu preset back to the study's choice, and Muon in AdamW's place.
ABLATIONS = {
    "cpu-learned": ["--positions", "learned"],
    "cpu-layernorm": ["--norm", "layernorm"],
    "cpu-gelu": ["--mlp", "gelu", "--d_ff", "768"],  # the same parameters as swiglu's 512
    "cpu-untied": ["--no-tie_embeddings"],
    "cpu-bias": ["--bias", "--head_bias"],
    "cpu-muon": ["--optimizer", "muon"],
    "cpu-ls0.1": ["--label_smoothing", "0.1"],
    "cpu-starts0": ["--story_starts", "0"],  # every row at any offset
    "cpu-adam98": ["--lr_betas", "0.9", "0.98", "--lr", "2e-3"],  # the study's betas, SMALL's lr
    "cpu-ctx256": ["--context_size", "256", "--max_len", "256", "--batch_size", "8"],  # round 14's
    "cpu-cosine": ["--lr_schedule", "cosine"],  # the decay before round 19's wsd
    "cpu-cd0.2": ["--cooldown", "0.2"],  # wsd's cooldown before round 20
}
# --candidates: options the cpu recipe does not use yet, each added on its own (docs/quality.md
# names their papers). "prepare:ARGS" arms train on a folder prepared with those arguments.
CANDIDATES = {
    "cpu-ema": ["--ema", "0.995"],
    "cpu-edrop": ["--embedding_drop", "0.1"],  # on the embeddings too: pays from ~7,000 steps
    "cpu-zero_init": ["--zero_init"],
    "cpu-scalars": ["--residual_scalars"],  # per-layer residual scalars (nanochat)
    "cpu-ve": ["--value_embeds"],  # value embeddings (modded-nanogpt, nanochat); our Llama class
    "cpu-softcap": ["--logit_softcap", "15"],  # logit soft-capping (Gemma 2, modded-nanogpt)
    "cpu-late": ["--dropout_from", "0.25"],  # late dropout (Liu et al. 2023): none for a quarter
    "cpu-relu2": ["--mlp", "relu2", "--d_ff", "768"],  # the same parameters as swiglu's 512
    "cpu-bpe8192": ["prepare:--vocab_size 8192"],  # more bytes per token, more parameters
    # SwiGLU at GELU's 4x parameters: 9% faster; 0.002 better side by side, 0.008 worse at 15
    # minutes beside the same day's preset (docs/quality.md, rounds seventeen and eighteen)
    "cpu-ff384": ["--d_ff", "384"],
}
# Every name --recipes takes: the recipes, and each ablation or candidate arm on its own (say, to
# give one arm the full budget without running the rest).
NAMED = RECIPES | {
    n: (x[0], RECIPES["cpu"][1])
    if x[0].startswith("prepare:")
    else (RECIPES["cpu"][0], RECIPES["cpu"][1] + x)
    for n, x in (ABLATIONS | CANDIDATES).items()
}


def real_stories(data: Path, length: int) -> tuple[float, float, float]:
    """Repeated 4-grams of the real valid stories, whole and cut to ``length`` tokens, and the
    share of them that end within the story protocol's cap: what a model's stories are held to
    (a longer story repeats more, so both repeat figures are given)."""
    from gpt_study.config import EOT_ID, SOT_ID
    from gpt_study.data.dataset import open_prepared

    ids = open_prepared(data).tokens("valid").tolist()
    stories, cur = [], []
    for t in ids:
        if t == SOT_ID:
            cur = []
        elif t == EOT_ID:
            stories.append(cur)
        else:
            cur.append(t)
    whole = story_metrics(stories, [True] * len(stories))["repeated_4gram"]
    cut = [st[:length] for st in stories]
    cap = STORY_PROTOCOL.max_new_tokens  # the <eot> is one of a story's new tokens
    ended = sum(len(st) + 1 <= cap for st in stories) / max(len(stories), 1)
    return whole, story_metrics(cut, [True] * len(cut))["repeated_4gram"], ended


def prepare(out: Path, tokenizer: str) -> Path:
    extra = tokenizer.removeprefix("prepare:").split() if tokenizer.startswith("prepare:") else []
    tok = "bpe" if extra else tokenizer
    folder = out / ("data-" + "-".join([tok, *(x.strip("-") for x in extra)]))
    if (folder / "meta.json").exists():  # prepared before: reuse it
        return folder
    cmd = ["prepare", "--data", str(SAMPLE), "--out", str(folder), "--tokenizer", tok, *extra]
    gpt_study(cmd + ["--no-progress"])
    return folder


def arm(text: str) -> tuple[str, str, list[str]]:
    """``--arm NAME=FLAGS``: (name, tokenizer spec, the cpu recipe's flags plus FLAGS). A tokenizer
    spec other than ``bpe`` (``prepare:--vocab_size 8192;``) names a folder prepared with those
    arguments."""
    name, _, flags = text.partition("=")
    tok, base = RECIPES["cpu"]
    if flags.startswith("prepare:"):
        tok, _, flags = flags.partition(";")
    if not name or not flags.strip():
        raise SystemExit(f'--arm {text!r}: write it as NAME="--flag value ..."')
    return name, tok, base + flags.split()


def gpt_study(args: list[str], log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "gpt_study", *args]
    print("$ gpt-study " + " ".join(args), flush=True)
    with open(log, "w") if log else open(os.devnull, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ)
    if done.returncode not in (0,):
        raise SystemExit(f"gpt-study {args[0]} failed ({done.returncode}); see {log}")


def run_recipe(name: str, data: Path, flags: list[str], args: argparse.Namespace, seed: int):
    """Train ``name`` for the budget, evaluate its best checkpoint; one result row."""
    root = args.out / f"{name}-s{seed}"
    if not (root / "last").exists():  # a finished run is reused: delete its folder to redo it
        train = ["train", "--data", str(data), "--save_root", str(root), *flags]
        train += ["--max_time", str(args.minutes), "--seed", str(seed), "--sample_tokens", "0"]
        train += ["--threads", str(args.threads), "--no-progress"]
        if args.epochs:
            train += ["--epoch", str(args.epochs)]
        t0 = time.perf_counter()
        gpt_study(train, root.parent / f"{root.name}.train.log")
        print(f"  trained in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (root / "eval.json").exists():
        gpt_study(evaluate_args(root, args.threads), root.parent / f"{root.name}.eval.log")
    return summarise(name, seed, root)


def evaluate_args(root: Path, threads: int) -> list[str]:
    """``gpt-study evaluate`` on a run's best checkpoint: no story flags, so its stories are
    the story protocol's, the ones evaluate and compare write for the same checkpoint."""
    ev = ["evaluate", "--checkpoint", str(root / "best"), "--json", str(root / "eval.json")]
    return ev + ["--threads", str(threads), "--no-progress"]


def summarise(name: str, seed: int, root: Path) -> dict:
    cfg = load_config(root / "best" / "config.json")
    ev = json.loads((root / "eval.json").read_text())
    valid = [r for r in read_metrics(root / "metrics.jsonl") if r["kind"] == "valid"]
    state = json.loads((root / "last" / "state.json").read_text())
    tokens, minutes = state["tokens"], state["elapsed_s"] / 60
    return {
        "recipe": name,
        "seed": seed,
        "tokenizer": cfg.data.tokenizer,
        "bits_per_byte": ev["valid"]["bits_per_byte"],
        "nll": ev["valid"]["nll"],
        "eot_share": ev["stories"]["eot_share"],
        "stories": ev["stories"]["stories"],
        "repeated_4gram": ev["stories"]["repeated_4gram"],
        "tokens": tokens,
        "minutes": minutes,
        "tokens_per_s": tokens / max(minutes * 60, 1e-9),
        "params": GPT(cfg.model).num_params(),
        "train_flops": flops_per_token(cfg.model, cfg.train.window) * tokens,
        "steps": state["step"],
        "mean_length": ev["stories"]["mean_length"],
        "curve": [(r["elapsed_s"] / 60, r["valid_bpb"]) for r in valid],
    }


def table(rows: list[dict]) -> str:
    head = "| recipe | seed | tokenizer | bits/byte | `<eot>` | rep. 4-grams | tokens | tokens/s | params | PFLOP | steps |"
    lines = [head, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['seed']} | {r['tokenizer']} | {r['bits_per_byte']:.4f} | "
            f"{eot_text(r)} | {r['repeated_4gram']:.2%} | {r['tokens']:,} | "
            f"{r['tokens_per_s']:,.0f} | {r['params']:,} | {r['train_flops'] / 1e15:.2f} | "
            f"{r['steps']:,} |"
        )
    return "\n".join(lines)


def eot_text(row: dict) -> str:
    """The ``<eot>`` share with its 95% interval (rows from before the count was kept: bare)."""
    if "stories" not in row:
        return f"{row['eot_share']:.0%}"
    return share_text(row)


def seed_table(rows: list[dict]) -> str:
    """Per recipe over its seeds: mean bits per byte, the spread between seeds (the run-to-run
    noise) and the difference from ``cpu``'s mean; empty with one seed."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r["bits_per_byte"])
    if max(map(len, by.values())) < 2:
        return ""
    base = sum(by["cpu"]) / len(by["cpu"]) if "cpu" in by else None
    lines = ["| recipe | seeds | mean bits/byte | spread (max - min) | vs cpu |"]
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for name, v in by.items():
        mean = sum(v) / len(v)
        diff = "" if base is None or name == "cpu" else f"{mean - base:+.4f}"
        lines.append(f"| {name} | {len(v)} | {mean:.4f} | {max(v) - min(v):.4f} | {diff} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        xs, ys = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
        ax.plot(
            xs, ys, "o-", ms=3, label=f"{r['recipe']} (seed {r['seed']}): {r['bits_per_byte']:.3f}"
        )
    ax.set_xlabel("minutes of training (wall clock)")
    ax.set_ylabel("valid bits per byte (during training: a share of the split)")
    budget = f"{minutes:g}-minute budget" if minutes > 0 else "equal steps, no time budget"
    ax.set_title(f"quality per CPU-minute, {budget}; final: whole valid split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per recipe")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(NAMED))
    p.add_argument("--ablation", action="store_true", help="also each cpu option switched back")
    p.add_argument("--candidates", action="store_true", help="also each candidate option added")
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=0, help="--threads of every run (0: auto)")
    p.add_argument("--epochs", type=int, default=0, help="--epoch of every run (0: the recipe's)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (then 1 thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help='an arm of your own: the cpu recipe plus train flags, e.g. --arm "ctx1k=--context_size '
        '1024 --max_len 1024 --batch_size 2" (repeatable; FLAGS may start with "prepare:ARGS;" to '
        'prepare its own folder, e.g. "prepare:--vocab_size 8192;")',
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [(n, *NAMED[n]) for n in args.recipes] + [arm(a) for a in args.arm]
    for wanted, arms in ((args.ablation, ABLATIONS), (args.candidates, CANDIDATES)):
        if wanted:
            todo += [] if any(n == "cpu" for n, _, _ in todo) else [("cpu", *RECIPES["cpu"])]
            todo += [(n, *NAMED[n]) for n in arms if n not in args.recipes]
    if args.parallel > 1:
        args.threads = 1
    data = {tok: prepare(args.out, tok) for tok in sorted({t for _, t, _ in todo})}
    jobs = [(n, data[t], f, args, s) for n, t, f in todo for s in args.seeds]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda job: run_recipe(*job), jobs))
    md = table(rows)
    if seeds := seed_table(rows):
        md += "\n\n" + seeds
    bpe_folders = [f for k, f in data.items() if k == "bpe" or k.startswith("prepare:")]
    if bpe_folders:  # the real stories, in the cpu recipe's tokens where it ran
        folder = data.get(RECIPES["cpu"][0], bpe_folders[0])
        bpe = [r["mean_length"] for r in rows if r["tokenizer"] == "bpe"]
        n = round(sum(bpe) / len(bpe))
        whole, cut, ended = real_stories(folder, max(n, 4))
        md += (
            f"\n\nReal valid stories (bpe): repeated 4-grams {whole:.2%} whole, {cut:.2%} cut to "
            f"{n} tokens (the bpe recipes' mean story length); {ended:.0%} end within "
            f"{STORY_PROTOCOL.max_new_tokens} tokens, the cap on the recipes' stories."
        )
    print(md)
    (args.out / "quality.md").write_text(md + "\n")
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "quality.png", args.minutes)
    print(f"wrote {args.out / 'quality.md'}, quality.json and quality.png")


if __name__ == "__main__":
    main()
