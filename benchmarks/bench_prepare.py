"""Time ``gpt-study prepare`` against a straightforward version of the study's procedure.

    python benchmarks/bench_prepare.py                  # 1x and 4x the shared sample, 3 repeats
    python benchmarks/bench_prepare.py --scales 1 --repeats 1

The corpus is ``../shared/data/tinystories`` (train.txt + valid.txt), and for Nx each file is
repeated N times into a temporary folder (never into the repo). Every measurement runs in a fresh
child process so that its peak memory (RSS) is its own; inside it, spaCy is imported before the
clock starts for both contenders, so import time counts for neither.

- ``reference``: the study's procedure done plainly in one process: ftfy + whitespace + lowercase
  per story, spaCy-tokenize every story to count, build the vocabulary, tokenize every story again
  to encode into Python lists, write uint16 arrays. Its arrays must equal ours (checked).
- ``word`` / ``bpe``: :func:`gpt_study.data.prepare.prepare` with all cores (``bpe`` includes
  training the BPE); ``word --workers 1`` shows what the single pass and the chunk cache give
  without a second core.

Stories/s counts stories read (train + valid). Peak RSS is the main process plus the largest
worker (an upper bound on what they held at once).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories"


def reference_word(folder: Path, out: Path, min_chars: int = 300, vocab_size: int = 30000) -> int:
    """The study's procedure, straightforwardly (one process, two tokenizations, Python lists)."""
    import ftfy

    from gpt_study.data.tokenizer import spacy_tokenizer

    tok = spacy_tokenizer()
    splits = {}
    read = 0
    for split in ("train", "valid"):
        text = (folder / f"{split}.txt").read_text(encoding="utf-8")
        # a story is the text between marker lines, without their line breaks
        raw = [s.removeprefix("\n").removesuffix("\n") for s in text.split("<|endoftext|>")]
        raw = [s for s in raw if s.strip()]
        read += len(raw)
        kept = [s for s in raw if len(s) >= min_chars]  # the study's filter: raw, before cleaning
        # the study's order (its newline bug fixed): whitespace to one space, lowercase, then ftfy
        splits[split] = [" ".join(ftfy.fix_text(" ".join(s.split()).lower()).split()) for s in kept]
    counts: Counter[str] = Counter()
    for story in splits["train"]:
        counts.update(t.text for t in tok(story))
    specials = ["<unk>", "<sot>", "<eot>"]
    ranked = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    vocab = specials + ranked[: vocab_size - len(specials)]
    index = {w: i for i, w in enumerate(vocab)}
    out.mkdir(parents=True, exist_ok=True)
    for split, stories in splits.items():
        ids: list[int] = []
        for story in stories:
            ids.append(1)
            ids.extend(index.get(t.text, 0) for t in tok(story))
            ids.append(2)
        np.array(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
    (out / "vocab.json").write_text(json.dumps(vocab))
    return read


def _peak_rss_mb() -> tuple[float, float]:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20
    return me, kids


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers), user + system."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(kind: str, folder: Path, out: Path, workers: int) -> dict:
    """One measurement (run in its own process)."""
    from gpt_study.config import DataConfig
    from gpt_study.data.prepare import prepare
    from gpt_study.data.tokenizer import spacy_tokenizer

    spacy_tokenizer()  # imports paid before the clock, for both contenders
    import tokenizers  # noqa: F401

    cpu0 = _cpu_seconds()
    t = time.perf_counter()
    if kind == "reference":
        read = reference_word(folder, out)
    else:
        tokenizer, _, one = kind.partition("-")  # "word-1": one process
        cfg = DataConfig(
            data=[str(folder)],
            tokenizer=tokenizer,
            out=str(out),
            force=True,
            workers=1 if one else workers,
        )
        prepare(cfg, progress=False, log=lambda m: None)
        meta = json.loads((out / "meta.json").read_text())
        read = sum(s["stories_read"] for s in meta["sources"])
    seconds = time.perf_counter() - t
    me, kids = _peak_rss_mb()
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu0,
        "stories": read,
        "rss_main_mb": me,
        "rss_worker_mb": kids,
    }


def make_corpus(tmp: Path, scale: int) -> Path:
    folder = tmp / f"x{scale}"
    folder.mkdir()
    for name in ("train.txt", "valid.txt"):
        data = (SAMPLE / name).read_bytes()
        with open(folder / name, "wb") as f:
            for _ in range(scale):
                f.write(data)
    return folder


def measure(kind: str, folder: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(folder), str(out), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="prepare's workers (0: all cores)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, folder, out, workers = args.child
        print(json.dumps(child(kind, Path(folder), Path(out), int(workers))))
        return
    if not SAMPLE.is_dir():
        sys.exit(f"no sample at {SAMPLE}")
    print(f"machine: {os.cpu_count()} CPUs ({os.uname().machine}), python {sys.version.split()[0]}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp_name:
        tmp = Path(tmp_name)
        for scale in args.scales:
            folder = make_corpus(tmp, scale)
            results: dict[str, list[dict]] = {"reference": [], "word": [], "word-1": [], "bpe": []}
            for _ in range(args.repeats):  # interleaved, so background load hits all alike
                for kind in results:
                    out = tmp / f"out-{kind}-{scale}"
                    results[kind].append(measure(kind, folder, out, args.workers))
            ref = tmp / f"out-reference-{scale}"
            for split in ("train", "valid"):  # same ids as the straightforward procedure
                a = np.fromfile(ref / f"{split}.bin", dtype=np.uint16)
                for kind in ("word", "word-1"):
                    b = np.fromfile(tmp / f"out-{kind}-{scale}" / f"{split}.bin", dtype=np.uint16)
                    assert np.array_equal(a, b), f"{kind} output differs from the reference"
            ref_s = statistics.median(r["seconds"] for r in results["reference"])
            for kind, rs in results.items():
                sec = statistics.median(r["seconds"] for r in rs)
                rows.append(
                    {
                        "scale": scale,
                        "kind": kind,
                        "seconds": sec,
                        "cpu": statistics.median(r["cpu_seconds"] for r in rs),
                        "stories_per_s": rs[0]["stories"] / sec,
                        "speedup": ref_s / sec,
                        "rss_mb": max(r["rss_main_mb"] + r["rss_worker_mb"] for r in rs),
                    }
                )
            for kind in results:
                shutil.rmtree(tmp / f"out-{kind}-{scale}", ignore_errors=True)
            shutil.rmtree(folder)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(
        f"\n{args.repeats} repeats, median time; CPU s = user + system of all processes; "
        "peak RSS = main + largest worker (max of runs)\n"
    )
    print("| corpus | procedure | seconds | stories/s | vs reference | CPU s | peak RSS (MB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    names = {
        "reference": "straightforward (word)",
        "word": "prepare --tokenizer word",
        "word-1": "prepare --tokenizer word --workers 1",
        "bpe": "prepare --tokenizer bpe",
    }
    for r in rows:
        print(
            f"| {r['scale']}x | {names[r['kind']]} | {r['seconds']:.2f} | "
            f"{r['stories_per_s']:,.0f} | {r['speedup']:.2f}x | {r['cpu']:.2f} | {r['rss_mb']:.0f} |"
        )
    if 1 in args.scales and 4 in args.scales:
        for kind in ("word", "bpe"):
            one = next(r for r in rows if r["scale"] == 1 and r["kind"] == kind)
            four = next(r for r in rows if r["scale"] == 4 and r["kind"] == kind)
            print(f"\n{kind}: peak RSS at 4x / 1x = {four['rss_mb'] / one['rss_mb']:.2f}", end="")
        print()


if __name__ == "__main__":
    main()
