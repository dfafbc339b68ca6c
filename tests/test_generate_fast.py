"""The batch-1 fast path: fp32 tokens equal the general loop's; int8 and bf16 weights keep the
held-out NLL within 0.5% of fp32 on a (briefly) trained model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from gpt_study.config import EOT_ID, SOT_ID, SampleConfig
from gpt_study.data.dataset import open_prepared
from gpt_study.data.tokenizer import load_tokenizer
from gpt_study.evaluate.heldout import score_tokens
from gpt_study.generate import decode_row, generate_ids, quantize_int8, weight_bytes_per_token
from gpt_study.generate.weights import Int8Linear
from gpt_study.model.gpt import GPT, GPTConfig

V = 60


def tiny_model(seed=0, max_len=32):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, max_len=max_len, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so greedy choices are not near-ties
        model.head.weight.mul_(20)
        model.head.bias[EOT_ID] = -1e4
    return model


@pytest.mark.parametrize(
    "prompt,window,keep,n",
    [
        ([SOT_ID, 5, 9, 17, 4], 32, None, 27),  # fills the positions exactly
        ([SOT_ID, 5, 9, 17, 4], 16, 12, 40),  # slides, default-like keep
        ([SOT_ID, 7], 10, 10, 40),  # keep = window: a plain sliding window
        ([SOT_ID, 7], 8, 1, 30),  # keep one token
        ([SOT_ID] + [3 + i % 50 for i in range(40)], 16, None, 20),  # prompt longer than window
        ([SOT_ID], 32, None, 5),  # a one-token prompt
    ],
)
def test_fast_greedy_equals_the_general_loop(prompt, window, keep, n):
    model = tiny_model(1)
    greedy = SampleConfig(greedy=True, max_new_tokens=n)
    want = generate_ids(model, [prompt], greedy, window=window, keep=keep, fast=False)
    seen: list[int] = []
    new, finished = decode_row(model, prompt, greedy, window, keep=keep, on_token=seen.append)
    assert new == want.new_ids[0] and finished == want.finished[0] and seen == new
    # generate_ids hands one greedy prompt to the fast path, callback included
    rows: list[tuple[int, int]] = []
    got = generate_ids(
        model,
        [prompt],
        greedy,
        window=window,
        keep=keep,
        on_token=lambda r, t: rows.append((r, t)),
    )
    assert got.new_ids[0] == new and rows == [(0, t) for t in new]


def test_fast_greedy_stops_at_eot():
    model = tiny_model(2)
    with torch.no_grad():
        model.head.bias[EOT_ID] = 1e4
    greedy = SampleConfig(greedy=True, max_new_tokens=10)
    assert decode_row(model, [SOT_ID, 5], greedy, 16) == ([EOT_ID], True)
    assert decode_row(model, [SOT_ID, 5], greedy, 16, eot_id=-1)[1] is False


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    for bias in (True, False):
        lin = nn.Linear(64, 48, bias=bias)
        q = Int8Linear(lin)
        x = torch.randn(2, 5, 64)  # (B, T, in)
        want, got = lin(x), q(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        rel = (got - want).norm() / want.norm()
        assert rel < 0.01, rel  # int8 weights, bf16 activations: well under 1%
        many = torch.randn(40, 64)  # enough rows for the dequantized kernel
        rel = (q(many) - lin(many)).norm() / lin(many).norm()
        assert rel < 0.01, rel
        assert q.weight.dtype == torch.int8 and (q.bias is None) == (not bias)


def test_quantize_int8_swaps_every_linear_and_quarters_the_bytes():
    model = tiny_model(3)
    before = weight_bytes_per_token(model)
    q = quantize_int8(copy.deepcopy(model))
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4 * 2 + 1
    after = weight_bytes_per_token(q)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # each weight loses 3 of its 4 bytes and gains a 2-byte scale per output row
    rows = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear))
    assert before - after == 3 * linear - 2 * rows
    emb = 2 * 32 * 4  # one row of each embedding table, fp32
    assert before == emb + sum(p.numel() * 4 for n, p in model.named_parameters() if "emb" not in n)


def _train(model: GPT, tokens: np.ndarray, steps: int = 80, T: int = 32) -> GPT:
    """A few quick AdamW steps: weights shaped by data, not the 0.02 init."""
    gen = torch.Generator().manual_seed(0)
    data = torch.from_numpy(tokens.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(data) - T - 1, (16,), generator=gen)
        x = torch.stack([data[j : j + T] for j in i])  # (16, T)
        y = torch.stack([data[j + 1 : j + T + 1] for j in i])  # (16, T)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_int8_and_bf16_weights_keep_valid_nll_within_half_a_percent(tiny_prepared, monkeypatch):
    data = open_prepared(tiny_prepared)
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=load_tokenizer(data.tokenizer_path).vocab_size,
        max_len=32,
        d_model=64,
        d_ff=128,
        n_layers=2,
        n_heads=4,
        attention_drop=0.0,
        residual_drop=0.0,
        embedding_drop=0.0,
    )
    model = _train(GPT(cfg), np.asarray(data.tokens("train")))
    valid = np.asarray(data.tokens("valid"))

    def nll(m):
        s = score_tokens(m, valid, window=32)
        return s.nll / s.targets

    base = nll(model)
    assert base < 2.0  # learned something (the synthetic stories are very regular)
    int8 = quantize_int8(copy.deepcopy(model))
    reduced = {"bf16": copy.deepcopy(model).to(torch.bfloat16), "int8": int8}
    for name, m in reduced.items():
        got = nll(m)
        print(f"NLL fp32 {base:.4f}, {name} {got:.4f}, {(got - base) / base:+.3%}")
        assert abs(got - base) / base < 0.005
    # the few-rows kernel of a decoding step, on every block: the same numbers within rounding
    monkeypatch.setattr(Int8Linear, "rows_for_dequantized", 10**9)
    assert nll(int8) == pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_an_int8_row_computes_the_same_alone_or_among_many(bias):
    """--quantize int8 is int8 weights and nothing else: a block of rows and each row alone (a
    decoding step at batch 1) differ only in the rounding of a bf16 product, on either side of
    rows_for_dequantized (they used to quantize the activations of 16 rows and more)."""
    torch.manual_seed(1)
    lin = nn.Linear(64, 300, bias=bias)
    q = Int8Linear(lin)
    for rows in (Int8Linear.rows_for_dequantized - 1, Int8Linear.rows_for_dequantized, 100):
        x = torch.randn(rows, 64)
        together = q(x)
        alone = torch.cat([q(x[i : i + 1]) for i in range(rows)])  # (rows, out)
        if rows < Int8Linear.rows_for_dequantized:
            assert torch.equal(together, alone)  # one kernel: the same numbers
        else:  # bf16 rounds to 2**-9 of a value; quantized activations differed by 0.6% here
            diff = (together - alone).abs().mean() / alone.abs().mean()
            assert diff < 0.003, (rows, diff)


def test_cli_generates_with_int8_weights(tmp_path, capsys):
    from gpt_study.checkpoint import save_checkpoint
    from gpt_study.cli import main
    from gpt_study.config.presets import preset_config
    from gpt_study.data.tokenizer import WordTokenizer

    words = "once upon a time there was little girl named lily . she liked to play".split()
    vocab = ["<unk>", "<sot>", "<eot>"] + words + [f"w{i}" for i in range(V - 3 - len(words))]
    WordTokenizer(vocab).save(tmp_path / "tok.json")
    cfg = preset_config(
        "tiny",
        model={"vocab_size": V, "max_len": 32, "d_model": 32, "d_ff": 64, "n_layers": 2},
        train={"context_size": 16},
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg.model), cfg, tmp_path / "tok.json")
    args = ["generate", "--checkpoint", str(ckpt), "--greedy", "--max_new_tokens", "5"]
    assert main([*args, "--quantize", "int8", "--prompt", "once upon", "--raw"]) == 0
    raw = capsys.readouterr().out.split()
    assert raw[:3] == ["<sot>", "once", "upon"] and len(raw) <= 8


def test_quantize_is_one_rule_for_every_reader():
    """--quantize's values and meaning live in generate.weights: the CLI offers QUANTIZE, and a
    library reader (serve's Models.load) refuses another value instead of serving floats."""
    from gpt_study.generate.weights import QUANTIZE, quantize
    from gpt_study.runtime.errors import UserError

    assert QUANTIZE == ("none", "int8")
    model = tiny_model(1)
    assert quantize(model, "none") is model and not any(
        isinstance(m, Int8Linear) for m in model.modules()
    )
    assert any(isinstance(m, Int8Linear) for m in quantize(model, "int8").modules())
    with pytest.raises(UserError, match="unknown --quantize 'int4'"):
        quantize(tiny_model(1), "int4")
