"""The inspection path: the model re-run step by step equals the fused model and an oracle."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from gpt_study.config import EOT_ID, SOT_ID
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.evaluate.heldout import score_tokens
from gpt_study.evaluate.introspect import pieces, query_window, score_ids, text_ids, trace
from gpt_study.model.gpt import GPT, GPTConfig

V = 40
WORDS = "once upon a time there was little girl named lily . she liked to play , and the n't could".split()
VOCAB = ["<unk>", "<sot>", "<eot>"] + WORDS + [f"w{i}" for i in range(V - 3 - len(WORDS))]


def _model(seed=0, dtype=torch.float64):
    """A tiny GPT in float64 (so the three computations agree to rounding), with sharper
    attention than the 0.02 init gives, so that its weights are far from uniform."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, max_len=16, d_model=32, d_ff=64, n_layers=3, n_heads=4)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(25)
    return model.to(dtype)


def _oracle_attention(model, ids):
    """softmax(q k^T / sqrt(d)) with the mask computed entry by entry, from the fused model's own
    block inputs (captured with hooks on each block's first LayerNorm)."""
    inputs = []
    hooks = [b.ln1.register_forward_hook(lambda m, i, o: inputs.append(o)) for b in model.blocks]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    out = []
    T = len(ids)
    for block, x in zip(model.blocks, inputs, strict=True):
        C = x.size(-1)
        nh = block.attn.n_heads
        hs = C // nh
        with torch.no_grad():
            q, k, _ = block.attn.qkv(x).reshape(-1, 3 * C).split(C, dim=-1)  # (T, C) each
        layer = torch.zeros(nh, T, T, dtype=torch.float64)
        for h in range(nh):
            qh, kh = q[:, h * hs : (h + 1) * hs].double(), k[:, h * hs : (h + 1) * hs].double()
            for i in range(T):
                dots = [float(qh[i] @ kh[j]) / math.sqrt(hs) for j in range(i + 1)]
                s = torch.tensor(dots, dtype=torch.float64)
                e = torch.exp(s - s.max())
                layer[h, i, : i + 1] = e / e.sum()
        out.append(layer)
    return torch.stack(out)  # (L, nh, T, T)


def test_trace_logits_equal_the_fused_model():
    model = _model()
    ids = [SOT_ID, 5, 9, 3, 17, 4, 4, 22, 8, 30]
    tr = trace(model, ids)
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(tr.logits, want, rtol=1e-10, atol=1e-10)
    L = model.config.n_layers
    assert tr.lens.shape == (L + 1, len(ids), V)
    torch.testing.assert_close(tr.lens[-1], want, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # row 0 of the lens: the embeddings through the final LayerNorm and head
        emb = model.tok_emb(torch.tensor(ids)) + model.pos_emb(torch.arange(len(ids)))
        torch.testing.assert_close(tr.lens[0], model.head(model.ln_f(emb)), rtol=1e-10, atol=1e-10)


def test_trace_has_no_dropout_even_in_training_mode():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, max_len=16, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    model = GPT(cfg).double()  # the study's dropout (0.1 everywhere) is on by default
    ids = [SOT_ID, 5, 9, 3, 17]
    model.eval()
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    model.train()
    torch.testing.assert_close(trace(model, ids).logits, want, rtol=1e-10, atol=1e-10)
    assert model.training  # left as it was


def test_trace_in_float32_is_close_to_the_fused_model():
    model = _model(dtype=torch.float32)
    ids = [SOT_ID, 5, 9, 3, 17, 4, 4, 22, 8, 30, 11, 2, 6, 7, 3, 9]
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(trace(model, ids).logits, want, rtol=1e-4, atol=1e-4)


def test_trace_attention_equals_the_oracle():
    model = _model(seed=1)
    ids = [SOT_ID, 7, 3, 12, 3, 25, 6, 14]
    tr = trace(model, ids)
    want = _oracle_attention(model, ids)
    torch.testing.assert_close(tr.attention, want, rtol=1e-10, atol=1e-12)
    assert torch.all(tr.attention.triu(diagonal=1) == 0)  # nothing from the future
    ones = torch.ones(tr.attention.shape[:-1], dtype=torch.float64)
    torch.testing.assert_close(tr.attention.sum(-1), ones)
    assert tr.attention.max() > 0.5  # sharp enough that the test could fail


def test_trace_takes_the_positions_the_forward_pass_takes():
    """Learned positions end at max_len (the forward pass refuses more); rotary ones go on past
    it, as generate and score_ids let them (a window longer than max_len), and trace agrees with
    the model there."""
    with pytest.raises(ValueError, match="exceed max_len 16"):
        trace(_model(), list(range(17)))
    with pytest.raises(ValueError, match="at least one token"):
        trace(_model(), [])
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=V, max_len=16, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    model = GPT(dataclasses.replace(cfg, positions="rope")).eval().double()
    ids = [SOT_ID] + [3 + i % 30 for i in range(23)]  # 24 tokens, past max_len
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(trace(model, ids).logits, want, rtol=1e-10, atol=1e-10)


def test_scores_sum_to_the_held_out_scorer():
    model = _model(seed=2, dtype=torch.float32)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, size=45).tolist()
    scores = score_ids(model, ids, window=8, top_k=3)
    assert scores.nll.shape == (44,) and scores.top_ids.shape == (44, 3)
    sums = score_tokens(model, np.asarray(ids), window=8)
    assert math.isclose(float(scores.nll.sum()), sums.nll, rel_tol=1e-5)
    torch.testing.assert_close(scores.prob, torch.exp(-scores.nll))
    assert torch.all(scores.top_probs[:, 0] >= scores.prob - 1e-6)  # top-1 is at least the target
    assert torch.all(scores.top_probs[:, :-1] >= scores.top_probs[:, 1:])


def test_query_window_follows_the_scoring_windows():
    """The window attention is shown in is validation's own (eval_windows), for every position
    of texts of many lengths and windows."""
    from gpt_study.data.dataset import eval_windows

    assert [query_window(p, 8) for p in (0, 7, 8, 15, 16)] == [0, 0, 8, 8, 16]
    for window in (1, 3, 8):
        for n in range(2, 30):
            for start, length in eval_windows(n, window):
                for p in range(start, start + length - 1):  # the inputs of this window
                    assert query_window(p, window) == start, (n, window, p)


def test_text_ids_and_pieces_read_like_the_text():
    tok = WordTokenizer(VOCAB)
    text = "Once upon a time, Lily could n't play.\n<|endoftext|>\nShe liked the girl."
    ids, n_bytes, stories = text_ids(tok, text)
    assert stories == 2 and ids[0] == SOT_ID and ids.count(EOT_ID) == 2 and ids[-1] == EOT_ID
    assert n_bytes == len("once upon a time, lily could n't play.") + len("she liked the girl.")
    got = pieces(tok, ids)
    assert got[0] == "<sot>" and got[-1] == "<eot>"
    first = got[1 : ids.index(EOT_ID)]
    assert "".join(first) == tok.decode(ids[1 : ids.index(EOT_ID)])
    assert "n't" in first  # could + n't joins without a space


@pytest.mark.parametrize(
    "options",
    [
        dict(positions="rope"),
        dict(mlp="swiglu", norm="rmsnorm", qk_norm=True),
        dict(mlp="relu2", tie_embeddings=True, bias=False, head_bias=False),
    ],
)
def test_trace_follows_the_model_options(options):
    """Rotary positions, qk-norm and the other feed-forwards go through the model's own
    projection and activation, so the trace stays equal to the fused model."""
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=V, max_len=16, d_model=32, d_ff=64, n_layers=2, n_heads=4, **options)
    model = GPT(cfg).eval().double()
    ids = [SOT_ID, 5, 9, 3, 17, 4, 4, 22]
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(trace(model, ids).logits, want, rtol=1e-10, atol=1e-10)
