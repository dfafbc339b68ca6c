"""Parts of ``bench_generate.py`` that need more than a few lines: the machine's memory
bandwidth, the transformers row (export, load, generate), the torch.compile'd fast loop and the
NLL of each precision on a trained checkpoint."""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpt_study.checkpoint import load_checkpoint, save_checkpoint
from gpt_study.config import SampleConfig
from gpt_study.data.dataset import open_prepared
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.evaluate.heldout import score_tokens
from gpt_study.generate import (
    RowDecoder,
    decode_row,
    generate_ids,
    quantize_int8,
    weight_bytes_per_token,
)
from gpt_study.generate.weights import Int8Linear
from gpt_study.model.gpt import GPT


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def memory_bandwidth() -> dict[str, float]:
    """GB/s of a 256 MB copy (bytes read + written), a 256 MB sum (read) and an 8 MB copy."""
    big = torch.ones(64 * 2**20)  # 256 MB of fp32, pages touched
    out = torch.empty_like(big)
    small, small_out = torch.ones(2 * 2**20), torch.empty(2 * 2**20)  # 8 MB
    nbytes, small_bytes = big.numel() * 4, small.numel() * 4
    return {
        "copy": 2 * nbytes / _median_seconds(lambda: out.copy_(big), 7) / 1e9,
        "read": nbytes / _median_seconds(big.sum, 7) / 1e9,
        "copy_l3": 2 * small_bytes / _median_seconds(lambda: small_out.copy_(small), 50) / 1e9,
    }


def hf_greedy(model: GPT, cfg, prompt: list[int], tmp: Path) -> Callable[[int], list[int]]:
    """Export ``model`` with ``gpt-study export`` and return transformers' greedy decoding of
    ``prompt`` (its own cache, no repetition penalty, ``<eot>`` not honoured)."""
    import transformers

    from gpt_study.export import export_hf

    transformers.logging.set_verbosity_error()  # not the folder's sampling flags, ignored here

    specials = ["<unk>", "<sot>", "<eot>"]
    vocab = specials + [f"w{i}" for i in range(cfg.model.vocab_size - len(specials))]
    WordTokenizer(vocab).save(tmp / "tokenizer.json")
    save_checkpoint(tmp / "ckpt", model, cfg, tmp / "tokenizer.json")
    result = export_hf(tmp / "ckpt", tmp / "hf", log=lambda _: None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        result.out, trust_remote_code=result.remote_code, dtype=torch.float32
    ).eval()
    ids = torch.tensor([prompt])

    def run(k: int) -> list[int]:
        gen = transformers.GenerationConfig(
            do_sample=False, max_new_tokens=k, repetition_penalty=1.0, eos_token_id=None,
            pad_token_id=2,
        )  # fmt: skip
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
        return out[0, len(prompt) :].tolist()

    return run


def compiled_greedy(model: GPT, window: int, prompt: list[int]) -> Callable[[int], list[int]]:
    """The fast loop with its one-token step compiled (dynamic shapes: one graph for every
    length); compiling happens at the first call and is timed here, not in the row."""
    dec = RowDecoder(model, window)
    dec.compile()
    t = time.perf_counter()
    greedy = SampleConfig(greedy=True, max_new_tokens=4)
    decode_row(model, prompt, greedy, window, eot_id=-1, decoder=dec)
    print(f"# torch.compile of the fast step: {time.perf_counter() - t:.0f} s")

    def run(k: int) -> list[int]:
        g = SampleConfig(greedy=True, max_new_tokens=k)
        return decode_row(model, prompt, g, window, eot_id=-1, decoder=dec)[0]

    return run


def _prefix(a: list[int], b: list[int]) -> int:
    """Tokens until the first difference (after it, greedy continuations go their own way)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def nll_table(checkpoint: str, max_rows: int = 400, prompts: int = 16, n: int = 100) -> None:
    """Valid NLL, speed and greedy agreement of fp32, bf16 and int8 weights of a trained model.

    int8 is scored twice: with each kernel of ``Int8Linear`` (many rows: the dequantized bf16
    matmul; a decoding step's few rows: ``torch._weight_int8pack_mm``), one computation."""
    ckpt = load_checkpoint(checkpoint)
    model, context = ckpt.model.eval(), ckpt.window
    valid = open_prepared(ckpt.config.train.data).tokens("valid")
    int8 = quantize_int8(copy.deepcopy(model)).eval()
    variants = [
        ("fp32", model, 16),
        ("bf16", copy.deepcopy(model).to(torch.bfloat16).eval(), 16),
        ("int8 (dequantized from 32 rows, the default)", int8, 32),
        ("int8 (the few-rows kernel on every block)", int8, 10**9),
    ]
    starts = [[1, 3 + i] for i in range(prompts)]  # <sot> and one of the commonest words
    greedy = SampleConfig(greedy=True, max_new_tokens=n)
    base_ids = [generate_ids(model, [p], greedy, context).new_ids[0] for p in starts]
    print(
        f"\n{checkpoint} (step {ckpt.state.get('step')}): valid NLL over {max_rows} windows of "
        f"{context}; greedy decoding from {prompts} prompts, up to {n} tokens each"
        "\n\n| weights | MB/token | valid NLL | vs fp32 | prompts with fp32's tokens |"
        " tokens before the first difference (mean) | tokens/s (CPU) |"
        "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    base = None
    for name, m, rows in variants:
        Int8Linear.rows_for_dequantized = rows
        sums = score_tokens(m, valid, context, batch_size=16, max_rows=max_rows)
        nll = sums.nll / sums.targets
        base = nll if base is None else base
        c0, toks, same, prefix = time.process_time(), 0, 0, 0
        for p, want in zip(starts, base_ids, strict=True):
            got = decode_row(m, p, greedy, context)[0]
            toks += len(got)
            same += got == want
            prefix += _prefix(got, want)
        rate = toks / (time.process_time() - c0)
        print(
            f"| {name} | {weight_bytes_per_token(m) / 1e6:.1f} | {nll:.4f} | "
            f"{(nll - base) / base:+.3%} | {same}/{prompts} | {prefix / prompts:.0f} | {rate:,.0f} |"
        )
    Int8Linear.rows_for_dequantized = 32
