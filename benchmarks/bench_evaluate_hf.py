"""How long ``gpt-study evaluate --hf`` takes for a model of TinyStories-33M's shape on this CPU.

    python benchmarks/bench_evaluate_hf.py                   # probe, then the whole valid split
    python benchmarks/bench_evaluate_hf.py --fraction 0.25   # a quarter of it, extrapolated

The model is a ``GPTNeoForCausalLM`` with random weights in the shape of
``roneneldan/TinyStories-33M``'s ``config.json``: hidden 768, 4 layers, 16 heads, 2,048
positions, local attention over 256 in every other layer, a 50,257-token vocabulary, tied
embeddings. Its tokenizer is a byte-level BPE of the same size trained here on the shared
sample's train split (GPT-Neo's own is on the Hub, out of reach offline), so the token count of
the valid split is near, not equal to, what TinyStories' tokenizer gives; tokens per second is
the figure to carry over. The data are ``../shared/data/tinystories`` prepared with ``bpe``
(only the text and its bytes are read: :func:`gpt_study.data.text.split_stories`).

First a probe: a few windows at each dtype and batch size, to pick the fastest; then the
command itself, ``gpt-study evaluate --hf MODEL --data FOLDER --no_stories`` at that setting,
timed from start (loading included) to end, on the whole split or ``--fraction`` of its windows
(the time then scaled up, and said so); then the stories alone (``--no_valid``: 32 stories of up
to 512 tokens: random weights never write the end token, so they all run to 512).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories"
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from gpt_study.cli import main  # noqa: E402
from gpt_study.data.dataset import open_prepared  # noqa: E402
from gpt_study.data.text import split_stories  # noqa: E402
from gpt_study.evaluate.hf import evaluate_hf_split, load_hf, story_stream  # noqa: E402

SHAPE = {  # roneneldan/TinyStories-33M's config.json, less its weights
    "vocab_size": 50257,
    "max_position_embeddings": 2048,
    "hidden_size": 768,
    "num_layers": 4,
    "num_heads": 16,
    "attention_types": [[["global", "local"], 2]],
    "window_size": 256,
    "intermediate_size": None,  # 4 x hidden
    "activation_function": "gelu_new",
    "tie_word_embeddings": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}
END = "<|endoftext|>"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    return names[0] if names else "unknown"


def build_model(folder: Path) -> Path:
    """The random-weight GPT-Neo and its 50,257-token BPE, saved once in ``folder``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if (folder / "model.safetensors").exists():
        return folder
    texts = (SAMPLE / "train.txt").read_text(encoding="utf-8").split(END)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SHAPE["vocab_size"],
        special_tokens=[END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t.strip() for t in texts if t.strip()], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=END, eos_token=END, model_max_length=2048
    )
    config = transformers.GPTNeoConfig(**{**SHAPE, "eos_token_id": fast.eos_token_id,
                                          "bos_token_id": fast.bos_token_id})  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPTNeoForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def prepared(out: Path) -> Path:
    folder = out / "bpe-4096"
    if not (folder / "meta.json").exists():
        argv = ["prepare", "--data", str(SAMPLE), "--tokenizer", "bpe", "--out", str(folder)]
        assert main(argv) == 0
    return folder


def probe(model: Path, data: Path, dtypes: list[str], batches: list[int], rows: int) -> list[dict]:
    """Tokens per second on ``rows`` windows at each dtype and batch size (after a warm-up)."""
    out = []
    for dtype in dtypes:
        hf = load_hf(str(model), "cpu", dtype)
        evaluate_hf_split(hf, data, batch_size=1, max_rows=1)  # warm-up
        for b in batches:
            t0 = time.perf_counter()
            r = evaluate_hf_split(hf, data, batch_size=b, max_rows=rows)
            dt = time.perf_counter() - t0
            out.append({"dtype": dtype, "batch_size": b, "tokens": r["tokens"], "seconds": dt,
                        "tokens_per_s": r["tokens"] / dt, "bits_per_byte": r["bits_per_byte"]})  # fmt: skip
            print(f"probe: {dtype:9s} batch {b}: {r['tokens'] / dt:8,.0f} tokens/s "
                  f"({r['tokens']:,} tokens in {dt:.1f} s)", flush=True)  # fmt: skip
        del hf
    return out


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    assert main(argv) == 0, argv
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    data = prepared(out)
    t0 = time.perf_counter()
    model = build_model(out / "tinystories-33m-shape")
    print(f"model: {model} ({time.perf_counter() - t0:.0f} s to build)", flush=True)
    hf = load_hf(str(model), "cpu", "float32")
    stream = story_stream(hf.tokenizer, split_stories(open_prepared(data)), hf.start_id, hf.eos_id)
    params = sum(p.numel() for p in hf.model.parameters())
    windows = -(-(len(stream) - 1) // hf.window)
    del hf
    print(f"valid split: {len(stream):,} tokens of the model's, {windows} windows of 2,048")
    results = probe(model, data, args.dtypes, args.batch_sizes, args.probe_rows)
    best = max(results, key=lambda r: r["tokens_per_s"])
    rows = max(1, round(args.fraction * windows)) if args.fraction < 1 else 0
    base = ["evaluate", "--hf", str(model), "--data", str(data), "--device", "cpu"]
    base += ["--dtype", best["dtype"], "--no-progress"]
    report = out / "bench_evaluate_hf.json"
    seconds = timed([*base, "--batch_size", str(best["batch_size"]), "--no_stories",
                     "--max_rows", str(rows), "--json", str(report)])  # fmt: skip
    valid = json.loads(report.read_text())["valid"]
    whole = seconds * (len(stream) - 1) / valid["tokens"]
    stories = timed([*base, "--no_valid"]) if args.stories else None
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": {"shape": SHAPE, "parameters": params},
        "split_tokens": len(stream) - 1,
        "split_bytes": valid["bytes"] if not valid["bytes_estimated"] else None,
        "probe": results,
        "best": {"dtype": best["dtype"], "batch_size": best["batch_size"]},
        "scored_tokens": valid["tokens"],
        "seconds": seconds,
        "tokens_per_s": valid["tokens"] / seconds,
        "whole_split_seconds": whole,
        "extrapolated": rows > 0,
        "bits_per_byte": valid["bits_per_byte"],
        "stories_seconds": stories,
    }


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench_evaluate_hf", help="model, data and JSON here")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the split's windows")
    p.add_argument("--probe_rows", type=int, default=4, help="windows per probe")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--no_stories", dest="stories", action="store_false", help="skip the stories")
    args = p.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    (Path(args.out) / "bench_result.json").write_text(json.dumps(result, indent=2))
    how = "extrapolated from " if result["extrapolated"] else ""
    print(
        f"{result['cpu']}, {result['threads']} threads: evaluate --hf on the whole valid split "
        f"({result['split_tokens']:,} tokens) {result['whole_split_seconds'] / 60:.1f} min "
        f"({how}{result['scored_tokens']:,} tokens at {result['tokens_per_s']:,.0f} tokens/s, "
        f"{result['best']['dtype']}, batch {result['best']['batch_size']})"
    )


if __name__ == "__main__":
    cli()
