"""The CPU dropout path of gpt_study.model.kernels against PyTorch's formulas and a hand-written oracle."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gpt_study.model import kernels, masks
from gpt_study.model.gpt import GPT, GPTConfig


@pytest.fixture(autouse=True)
def cpu_path_on():
    """Each test starts with the path on (the default) and leaves it on."""
    kernels.use_cpu_path(True)
    yield
    kernels.use_cpu_path(True)


def oracle_attention(q, k, v, keep=None, p=0.0):
    """softmax(q k^T / sqrt(d) + causal mask), then dropout with a given 0/1 ``keep``, then v."""
    T = q.size(-2)
    att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    att = F.softmax(att, dim=-1)
    if keep is not None:
        att = att * keep / (1 - p)
    return att @ v


def oracle_keep(B, nh, T, p, dtype):
    """The 0/1 mask the hand-written attention draws under the current seed, (B, nh, T, T): one
    mask per block of queries, each as wide as the keys its block sees (padded to 16), of which
    the real keys are kept here; the columns a block does not hold are future keys (0)."""
    full = torch.zeros(B * nh, T, T, dtype=torch.float64)
    blocks = kernels.query_blocks(B * nh, T)
    keeps = kernels.block_keeps(B * nh, T, p, dtype, torch.device("cpu"))
    for (s, e, w), keep in zip(blocks, keeps, strict=True):
        full[:, s:e, : min(w, T)] = (keep[..., :T] != 0).double()
    return full.view(B, nh, T, T)  # (B*nh, T, T) -> (B, nh, T, T)


@pytest.fixture(params=[0, 3, 16])
def blocks(request, monkeypatch):
    """The hand-written attention's queries in one block (0), or in blocks of 3 or 16 rows
    whatever the size (the production rule blocks only large shapes)."""
    if request.param:
        monkeypatch.setattr(kernels, "_BLOCKS_FROM", 0)
        monkeypatch.setattr(kernels, "_BLOCK_ROWS", request.param)
    return request.param


def test_query_blocks_cover_every_row_once_with_the_keys_it_sees(monkeypatch):
    assert kernels.query_blocks(64, 127) == [(0, 127, 128)]  # small: one block
    assert kernels.query_blocks(1024, 127) == [(0, 64, 64), (64, 127, 128)]  # the seed's
    monkeypatch.setattr(kernels, "_BLOCKS_FROM", 0)
    for rows in (3, 16, 64):
        monkeypatch.setattr(kernels, "_BLOCK_ROWS", rows)
        for T in (1, 7, 16, 40, 127, 128):
            got = kernels.query_blocks(2, T)
            assert [s for s, _, _ in got] == list(range(0, T, rows)) or rows >= T
            assert got[0][0] == 0 and got[-1][1] == T
            for (s, e, w), nxt in zip(got, got[1:] + [(T, T, 0)], strict=True):
                assert e == nxt[0] and s < e and w == kernels.key_width(e) and w % 16 == 0


def qkv(B=2, nh=3, T=7, hs=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, nh, T, hs, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def test_keep_mask_rate_values_and_seed():
    torch.manual_seed(3)
    keep = masks.keep_mask((1000, 1000), 0.1, torch.bfloat16)
    assert keep.dtype == torch.int16 and keep.shape == (1000, 1000)
    assert set(keep.unique().tolist()) == {-1, 0}
    # 1e6 draws: the standard error of the rate is 3e-4.
    assert abs((keep == 0).double().mean().item() - 0.1) < 1.5e-3
    torch.manual_seed(3)
    assert torch.equal(masks.keep_mask((1000, 1000), 0.1, torch.bfloat16), keep)
    assert not torch.equal(masks.keep_mask((1000, 1000), 0.1, torch.bfloat16), keep)  # it advances
    # Same draws, any float width: the mask depends on the generator, not on the dtype.
    torch.manual_seed(3)
    wide = masks.keep_mask((1000, 1000), 0.1, torch.float64)
    assert wide.dtype == torch.int64 and torch.equal(wide != 0, keep != 0)
    assert (masks.keep_mask((10_000,), 0.5, torch.float32) == 0).float().mean().item() == (
        pytest.approx(0.5, abs=0.02)
    )


def test_random_words_have_uniform_bits_and_follow_torch_seed():
    torch.manual_seed(5)
    words = masks.random_words(100_000, torch.device("cpu"))
    assert words.dtype == torch.int64 and words.shape == (100_000,)
    bits = torch.stack([(words >> i) & 1 for i in range(64)])  # (64, n)
    # 1e5 draws per bit: the standard error of each bit's mean is 1.6e-3.
    assert (bits.double().mean(dim=1) - 0.5).abs().max().item() < 0.01
    torch.manual_seed(5)
    assert torch.equal(masks.random_words(100_000, torch.device("cpu")), words)
    # A CPU draw takes exactly one word of torch's generator, however many parts it spans.
    for count in (10, 2 * masks._PART_WORDS + 5):
        torch.manual_seed(5)
        masks.random_words(count, torch.device("cpu"))
        after = torch.rand(3)
        torch.manual_seed(5)
        torch.empty((), dtype=torch.int64).random_()
        assert torch.equal(torch.rand(3), after)


def test_cpu_draws_come_in_seeded_parts_whatever_the_threads():
    """A draw of several parts gives the same bits from one thread or two (the parts run in a
    pool; the stream's seed and the part's index fix each), and a mask reads the same numbers
    as the words of a stream started from the same generator state."""
    count = 2 * masks._PART_WORDS + 5  # three parts, the last one short
    n = 4 * count - 3  # numbers: the last word only partly used
    was = torch.get_num_threads()
    try:
        got = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(9)
            words = masks.random_words(count, torch.device("cpu"))
            torch.manual_seed(9)
            keep = masks.keep_mask((n,), 0.2, torch.float16)
            got[threads] = (words, keep, torch.rand(2))
    finally:
        torch.set_num_threads(was)
    for a, b in zip(got[1], got[2], strict=True):
        assert torch.equal(a, b)
    words, keep, _ = got[1]
    halves = words.view(torch.int16)[:n]
    assert torch.equal(keep, torch.where(halves >= round(0.2 * 65536) - 32768, -1, 0).short())
    # A short mask reads only a prefix of its part: the same numbers as a long one's start.
    torch.manual_seed(9)
    short = masks.keep_mask((10,), 0.2, torch.float16)
    assert torch.equal(short, keep[:10])
    # Parts differ (each its own seed).
    first, second = words[: masks._PART_WORDS], words[masks._PART_WORDS : 2 * masks._PART_WORDS]
    assert not torch.equal(first, second)
    assert (keep == 0).double().mean().item() == pytest.approx(0.2, abs=0.005)


_ASKS = [
    ((3, 70_000), 0.1, torch.bfloat16),
    ((5, 1000), 0.3, torch.float32),
    ((300_001,), 0.5, torch.float16),
]


def _masks_in_block(asks, seed=3):
    torch.manual_seed(seed)
    with masks.mask_stream():
        keeps = [masks.keep_mask(*ask) for ask in asks]
    return keeps, torch.rand(2)


def test_mask_stream_bits_do_not_depend_on_what_was_made_ahead(monkeypatch):
    """A block's masks are the same whether its plan (the last block's asks) matched, matched in
    part, or was empty; they are laid one after the other in one stream, which takes one word
    of torch's generator; and a block that asks for none takes nothing."""
    monkeypatch.setattr(masks, "_plan", [])
    made = []
    make = masks._make_masks
    monkeypatch.setattr(masks, "_make_masks", lambda *a: made.append(len(a[2])) or make(*a))
    cold, after = _masks_in_block(_ASKS)  # no plan: each mask drawn when asked
    warm, after_warm = _masks_in_block(_ASKS)  # the plan matches: all made at the first ask
    assert made == [1, 1, 1, 3]
    for a, b in zip(cold, warm, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(after, after_warm)
    torch.manual_seed(3)
    torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(torch.rand(2), after)  # one word for the whole block
    # The plan breaks at the second ask: the same bits as a cold block with those asks.
    changed = [_ASKS[0], ((7, 7), 0.1, torch.float32), _ASKS[2]]
    broken, _ = _masks_in_block(changed)
    monkeypatch.setattr(masks, "_plan", [])
    for a, b in zip(broken, _masks_in_block(changed)[0], strict=True):
        assert torch.equal(a, b)
    # Stream order: the second mask reads on where the first ended, not from a new seed.
    torch.manual_seed(3)
    words = masks.random_words(-(-(210_000 + 5_000) // 4), torch.device("cpu"))
    second = words.view(torch.int16)[210_000:215_000].view(5, 1000)
    assert torch.equal(cold[1], torch.where(second >= round(0.3 * 65536) - 32768, -1, 0).int())
    torch.manual_seed(4)
    with masks.mask_stream():
        pass
    state = torch.get_rng_state()
    torch.manual_seed(4)
    assert torch.equal(torch.get_rng_state(), state)


def test_mask_stream_nests_and_outside_each_mask_is_its_own_stream():
    torch.manual_seed(3)
    with masks.mask_stream():
        a = masks.keep_mask(*_ASKS[0])
        with masks.mask_stream():  # reads on from the outer block
            b = masks.keep_mask(*_ASKS[1])
    block, _ = _masks_in_block(_ASKS[:2])
    assert torch.equal(a, block[0]) and torch.equal(b, block[1])
    torch.manual_seed(3)
    alone = [masks.keep_mask(*ask) for ask in _ASKS[:2]]
    assert torch.equal(alone[0], a) and not torch.equal(alone[1], b)


def test_keep_mask_odd_sizes_and_rounded_rate():
    for n in (1, 2, 3, 5, 4097):
        assert masks.keep_mask((n,), 0.3, torch.float32).shape == (n,)
    # p is rounded to a multiple of 1/65536: 1/65536 itself is kept exactly, not rounded to 0.
    torch.manual_seed(0)
    keep = masks.keep_mask((2_000_000,), 1 / 65536, torch.float32)
    assert 5 <= (keep == 0).sum().item() <= 60  # expected 30.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_apply_keep_zeroes_exactly_the_dropped(dtype):
    torch.manual_seed(1)
    x = torch.randn(64, 33).to(dtype)
    keep = masks.keep_mask(tuple(x.shape), 0.4, dtype)
    want = torch.where(keep != 0, x, torch.zeros((), dtype=dtype))
    got = masks.apply_keep(x.clone(), keep)
    assert torch.equal(got, want)
    before = x.clone()
    copied = masks.apply_keep(x, keep, copy=True)  # the same zeros, x left as it was
    assert torch.equal(copied, want) and copied.dtype == dtype and torch.equal(x, before)


def test_dropout_forward_and_backward_against_the_formula():
    x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    y = kernels.dropout(x, 0.25)
    torch.manual_seed(7)
    keep = (masks.keep_mask(tuple(x.shape), 0.25, x.dtype) != 0).double()
    torch.testing.assert_close(y, x * (1 / 0.75) * keep, rtol=0, atol=0)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * (1 / 0.75) * keep, rtol=0, atol=0)


def test_dropout_off_and_other_paths():
    x = torch.randn(3, 4)
    assert kernels.dropout(x, 0.1, training=False) is x
    assert kernels.dropout(x, 0.0) is x
    # Switched off, it is F.dropout, draw for draw.
    kernels.use_cpu_path(False)
    torch.manual_seed(5)
    got = kernels.dropout(x, 0.3)
    torch.manual_seed(5)
    assert torch.equal(got, F.dropout(x, 0.3))
    # p = 1 drops everything (F.dropout's rule) instead of dividing by zero.
    kernels.use_cpu_path(True)
    assert torch.equal(kernels.dropout(x, 1.0), torch.zeros_like(x))


def test_dropout_module_is_nn_dropout():
    m = kernels.Dropout(0.2)
    assert isinstance(m, torch.nn.Dropout) and repr(m) == repr(torch.nn.Dropout(0.2))
    x = torch.randn(5, 5)
    assert m.eval()(x) is x


@pytest.mark.parametrize("T", [7, 16, 40])  # padded to 16 keys, not padded, several widths
def test_causal_attention_matches_oracle_with_the_same_mask(T, blocks):
    q, k, v = qkv(T=T)
    B, nh, T, _ = q.shape
    torch.manual_seed(11)
    y = kernels.causal_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(11)
    keep = oracle_keep(B, nh, T, 0.3, q.dtype)
    assert 0 < keep.mean() < 1
    want = oracle_attention(q, k, v, keep, 0.3)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), g)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_causal_attention_gradcheck(blocks):
    q, k, v = qkv(B=1, nh=2, T=5, hs=3)

    def f(q, k, v):
        torch.manual_seed(2)  # the same mask on every call gradcheck makes
        return kernels.causal_attention(q, k, v, dropout_p=0.4)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_causal_attention_without_dropout_is_sdpa():
    q, k, v = qkv(dtype=torch.float32)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(kernels.causal_attention(q, k, v, 0.0), want)
    torch.testing.assert_close(want, oracle_attention(q, k, v))


@pytest.mark.parametrize("T", [7, 16, 40])
def test_the_hand_written_attention_without_dropout_equals_the_formula(T, blocks):
    """p = 0 through the hand-written kernel (what bf16 training on a CPU takes): the textbook
    attention's values and gradients, in float64."""
    q, k, v = qkv(T=T)
    y = kernels._CausalAttentionDropout.apply(q, k, v, 0.0)
    want = oracle_attention(q, k, v)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), g)
    for got, expected in zip(grads, torch.autograd.grad(want, (q, k, v), g), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda q, k, v: kernels._CausalAttentionDropout.apply(q, k, v, 0.0),
        tuple(t[:1, :2, :5, :3].detach().clone().requires_grad_() for t in (q, k, v)),
    )


@pytest.mark.parametrize(
    "dtype,grad,p,device_path,hand",
    [
        (torch.bfloat16, True, 0.0, True, True),  # bf16 training: the hand-written kernel
        (torch.bfloat16, False, 0.0, True, False),  # bf16 inference: PyTorch's
        (torch.float32, True, 0.0, True, False),  # fp32 training: PyTorch's
        (torch.float32, True, 0.1, True, True),  # dropout: the hand-written kernel
        (torch.bfloat16, True, 0.0, False, False),  # the path switched off (--attention sdpa)
    ],
)
def test_which_attention_a_cpu_takes(dtype, grad, p, device_path, hand):
    q = torch.randn(2, 2, 4, 8, dtype=dtype, requires_grad=grad)
    with kernels.cpu_path(device_path):
        assert kernels.uses_cpu_attention(q, p) is hand


def test_causal_attention_bf16_autocast_close_to_float64(blocks):
    q, k, v = qkv(B=2, nh=4, T=31, hs=8, dtype=torch.float32)
    qb, kb, vb = (t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.causal_attention(qb, kb, vb, 0.1)
    assert y.dtype == torch.bfloat16
    g = torch.randn(y.shape)
    y.backward(g.to(torch.bfloat16))
    torch.manual_seed(4)
    keep = oracle_keep(2, 4, 31, 0.1, torch.bfloat16)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (qb, kb, vb))
    want = oracle_attention(q64, k64, v64, keep, 0.1)
    want.backward(g.double())
    torch.testing.assert_close(y.double(), want, rtol=0.05, atol=0.03)
    for got, expected in ((qb, q64), (kb, k64), (vb, v64)):
        torch.testing.assert_close(got.grad.double(), expected.grad, rtol=0.05, atol=0.05)


def test_model_trains_through_both_paths_alike():
    """Same weights, dropout on: the CPU path and PyTorch's give equal-in-law losses, and the
    CPU path is reproducible under a seed."""
    cfg = GPTConfig(vocab_size=40, max_len=16, d_model=16, d_ff=32, n_layers=2, n_heads=2)
    torch.manual_seed(0)
    m = GPT(cfg).train()
    x = torch.randint(0, 40, (8, 16))
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    assert torch.equal(m(x), a)
    assert not torch.equal(m(x), a)  # dropout draws anew
    kernels.use_cpu_path(False)
    torch.manual_seed(1)
    b = m(x)
    # Different draws from the same distribution: not equal, and as noisy. The dropout noise's
    # power in the last residual stream, before the final norm hides a scale (train against
    # eval, 20 draws), moves with the rate and the 1 / (1 - p) scale: with the blocks as loud as
    # the embeddings, the paths measured 1% apart, and 18% without the scale.
    assert not torch.equal(a, b)
    m = copy.deepcopy(m)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("blocks.") and p.dim() == 2:
                p.mul_(10)

    def last_residual() -> torch.Tensor:
        kept: list[torch.Tensor] = []
        m.hidden(x, residuals=kept)
        return kept[-1].detach()

    m.eval()
    clean = last_residual()
    m.train()

    def noise(cpu_path: bool) -> float:
        kernels.use_cpu_path(cpu_path)
        power = 0.0
        for s in range(20):
            torch.manual_seed(100 + s)
            power += ((last_residual() - clean) ** 2).mean().item()
        return power / 20

    ours, theirs = noise(True), noise(False)
    assert abs(ours - theirs) < 0.1 * theirs, (ours, theirs)
    kernels.use_cpu_path(False)
    m.eval()
    kernels.use_cpu_path(True)
    c = m(x)
    kernels.use_cpu_path(False)
    assert torch.equal(m(x), c)  # evaluation never touches the path


def test_reuse_freed_memory_switches_mmap_off_and_back():
    import ctypes
    import ctypes.util
    import platform

    from gpt_study.runtime.device import reuse_freed_memory

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        assert reuse_freed_memory(True) is False
        return

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
            "keepcost".split()
        ]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    libc.mallinfo2.restype = MallInfo2

    def mapped_bytes_of(mib: int) -> int:
        before = libc.mallinfo2().hblkhd  # bytes in mmap-ed blocks
        a = torch.empty(mib << 20, dtype=torch.uint8)
        grown = libc.mallinfo2().hblkhd - before
        del a
        return grown

    try:
        assert reuse_freed_memory(True) is True
        assert mapped_bytes_of(64) == 0  # from the heap, which keeps it
    finally:
        assert reuse_freed_memory(False) is True
    # glibc's own way again: a block larger than any free heap space is a fresh mmap.
    assert mapped_bytes_of(512) >= 512 << 20


@pytest.mark.parametrize(
    "dtype,drop",
    [
        (torch.bfloat16, 0.0),  # bf16 training: the hand-written attention
        (torch.bfloat16, 0.1),  # and the CPU dropout masks
        (torch.float32, 0.1),  # fp32 with dropout: both hand-written kernels
        (torch.float32, 0.0),  # neither: PyTorch's own, which the compiler may trace
    ],
)
def test_compiled_step_runs_the_cpu_kernels_eagerly(dtype, drop):
    """torch.compile (its graph capture; ``aot_eager`` skips code generation, which the slow
    test in test_runtime_plan.py covers) over every branch of the CPU path: the kernels run
    between the compiled graphs, so the same seed gives the same masks, loss and gradients."""
    cfg = GPTConfig(
        vocab_size=40, max_len=16, d_model=16, d_ff=32, n_layers=2, n_heads=2,
        attention_drop=drop, residual_drop=drop, embedding_drop=drop,
    )  # fmt: skip
    assert_compiled_step_is_eager(cfg, dtype)


def assert_compiled_step_is_eager(cfg: GPTConfig, dtype: torch.dtype) -> None:
    """One training step of ``cfg``'s model through ``LMLoss``, eager and compiled from the same
    seed: the same loss and gradients (test_model_options.py runs it over every model option)."""
    from gpt_study.model.loss import LMLoss

    torch.manual_seed(0)
    net = GPT(cfg).train()
    x, y = torch.randint(0, cfg.vocab_size, (4, 16)), torch.randint(0, cfg.vocab_size, (4, 16))
    torch._dynamo.reset()
    runs = {}
    for name, loss_fn in (
        ("eager", LMLoss(net)),
        ("compiled", torch.compile(LMLoss(net), backend="aot_eager", fullgraph=False)),
    ):
        net.zero_grad()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn(x, y)
        loss.backward()
        runs[name] = loss.detach(), [p.grad.clone() for p in net.parameters()]
    (la, ga), (lb, gb) = runs["eager"], runs["compiled"]
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("used", [(0, 1, 2), (0, 2)])  # all three, or the keys left unused
def test_split_heads_gradient_is_the_plain_views_gradient(used):
    """split_heads's backward (the three gradients written into one buffer) against autograd
    through the plain view, permute and unbind: the same projection gradient, bit for bit."""
    torch.manual_seed(0)
    B, T, nh, hs = 2, 5, 3, 4
    qkv = torch.randn(B * T, 3 * nh * hs, requires_grad=True)
    gs = [torch.randn(B, nh, T, hs) for _ in range(3)]

    def grad(parts):
        assert all(p.shape == (B, nh, T, hs) for p in parts)
        loss = sum((parts[i] * gs[i]).sum() for i in used)
        return torch.autograd.grad(loss, qkv)[0]

    plain = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)
    got = kernels.split_heads(qkv, B, nh)
    assert "SplitHeads" in type(got[0].grad_fn).__name__
    for a, b in zip(got, plain, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grad(got), grad(plain))
