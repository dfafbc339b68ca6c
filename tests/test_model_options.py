"""Model options: each one's parameter count by formula, cached equals uncached decoding (the
rotary cache slides without re-encoding), checkpoints of tied weights, and exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from gpt_study.checkpoint import load_checkpoint, save_checkpoint
from gpt_study.config import GPTConfig, SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.generate import generate_ids, quantize_int8, reference_generate
from gpt_study.model.cache import KVCache
from gpt_study.model.gpt import GPT, apply_rope, rope_tables
from gpt_study.model.loss import LMLoss, reference_lm_loss
from gpt_study.train.fit import fit
from gpt_study.train.setup import build_config

V = 50
BASE = dict(vocab_size=V, max_len=32, d_model=32, d_ff=48, n_layers=2, n_heads=4)
# Llama's options, tied, no biases: the cpu preset's model
LLAMA_TIED = dict(positions="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=True, bias=False)
LLAMA_TIED.update(head_bias=False)
OPTIONS = {
    "study": {},
    "rope": dict(positions="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "tied": dict(tie_embeddings=True),
    "no-bias": dict(bias=False, norm_bias=False, head_bias=False),
    "qk_norm": dict(qk_norm=True),
    "zero_init": dict(zero_init=True),
    "scalars": dict(residual_scalars=True),
    "value_embeds": dict(value_embeds=True),
    "softcap": dict(logit_softcap=3.0),  # the matrix's logits reach about 5: the cap bites
    "modern": dict(LLAMA_TIED, qk_norm=True),
    # the cpu preset's shape with value embeddings: the Llama layout's class of ours exports it
    "llama_ve": dict(LLAMA_TIED, value_embeds=True),
    # and with capped logits, without value embeddings (the class's other reason)
    "llama_softcap": dict(LLAMA_TIED, logit_softcap=3.0),
    # the cpu preset's shape with LayerNorms (their biases) and a head bias: our Llama class
    "llama_ln": dict(LLAMA_TIED, norm="layernorm", head_bias=True),
    # rotary positions with the study's LayerNorm and a plain MLP: GPT-NeoX (Pythia's) layout
    "neox": dict(positions="rope", head_bias=False, mlp="relu2", tie_embeddings=True),
}


def cfg_of(name: str, **kw) -> GPTConfig:
    return GPTConfig(**{**BASE, **OPTIONS[name], **kw, "attention_drop": 0.0}, residual_drop=0.0)


def expected_params(c: GPTConfig) -> int:
    """The parameter count written out from the architecture, option by option."""
    d, f, hs = c.d_model, c.d_ff, c.d_model // c.n_heads
    norm = d if c.norm == "rmsnorm" else d + (d if c.norm_bias else 0)
    k = 2 if c.mlp == "swiglu" else 1
    attn = 4 * d * d + (4 * d if c.bias else 0) + (2 * hs if c.qk_norm else 0)
    mlp = d * k * f + f * d + ((k * f + d) if c.bias else 0)
    per_layer = attn + mlp + 2 * norm
    emb = c.vocab_size * d + (c.max_len * d if c.positions == "learned" else 0)
    head = (0 if c.tie_embeddings else c.vocab_size * d) + (c.vocab_size if c.head_bias else 0)
    scalars = 2 * c.n_layers if c.residual_scalars else 0
    value_embeds = c.vocab_size * d * ((c.n_layers + 1) // 2) if c.value_embeds else 0
    return emb + c.n_layers * per_layer + norm + head + scalars + value_embeds


@pytest.mark.parametrize("name", list(OPTIONS))
def test_parameter_count_by_formula(name):
    c = cfg_of(name)
    assert GPT(c).num_params() == expected_params(c)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_flops_per_token_counts_every_matmul_the_model_runs(name):
    """bench_train's MFU and bench_quality's PFLOP divide by flops_per_token: its weight part
    must be what torch's FLOP counter sees one training step's matmuls do (forward and
    backward), for every option; the attention part is the causal half of the (T, T) scores'
    two products, three times over (the counter does not see our attention kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    from gpt_study.model.gpt import flops_per_token

    c = cfg_of(name)
    B, T = 2, c.max_len
    idx = torch.randint(0, c.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    model = GPT(c)
    with FlopCounterMode(display=False) as counter:
        model(idx).float().sum().backward()
    attention = 3 * c.n_layers * (2 * 2 * T * c.d_model) / 2  # QK^T and AV, causal half
    assert counter.get_total_flops() / (B * T) + attention == flops_per_token(c, T)


def test_the_study_model_is_unchanged():
    c = preset_config("seed").model
    assert GPT(c).num_params() == expected_params(c) == 19_672_880


@pytest.mark.parametrize("name", list(OPTIONS))
def test_kv_cache_matches_full_forward(name):
    torch.manual_seed(0)
    m = GPT(cfg_of(name)).eval()
    x = torch.randint(0, V, (3, 20))
    full = m(x)
    cache = KVCache(m, batch_size=3)
    parts = [m(x[:, :7], cache), m(x[:, 7:12], cache)]
    parts += [m(x[:, i : i + 1], cache) for i in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_rotary_attention_depends_on_relative_positions_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    pos = torch.arange(5)
    here, there = rope_tables(pos, 8, 1e4), rope_tables(pos + 37, 8, 1e4)
    scores = apply_rope(q, *here) @ apply_rope(k, *here).transpose(-1, -2)
    shifted = apply_rope(q, *there) @ apply_rope(k, *there).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["study", "rope", "modern"])
def test_cached_generation_equals_the_uncached_oracle_across_slides(name):
    """48 new tokens through a 16-token window: the cache slides three times. Learned positions
    re-encode the kept tokens; rotary ones drop the oldest from the cache instead."""
    torch.manual_seed(1)
    m = GPT(cfg_of(name)).eval()
    prompt = [1, 5, 9, 3, 7]
    sample = SampleConfig(greedy=True, max_new_tokens=48)
    out = generate_ids(m, [prompt], sample, window=16, eot_id=-1, return_logits=True)
    want, want_logits = reference_generate(m, prompt, 48, window=16, eot_id=None)
    assert out.new_ids[0] == want
    for got, ref in zip(out.logits[0], want_logits, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_rotary_batches_of_different_prompts_equal_each_alone():
    torch.manual_seed(2)
    m = GPT(cfg_of("modern")).eval()
    prompts = [[1, 4], [1, 8, 8, 2, 9, 3, 6]]
    sample = SampleConfig(greedy=True, max_new_tokens=30)
    both = generate_ids(m, prompts, sample, window=12)
    for i, p in enumerate(prompts):
        alone = generate_ids(m, [p], sample, window=12)
        assert both.new_ids[i] == alone.new_ids[0]


def test_a_tied_checkpoint_stores_the_matrix_once_and_loads_tied(tmp_path, tok_file):
    cfg = preset_config("tiny", model={**BASE, **OPTIONS["modern"]}, train={"context_size": 16})
    torch.manual_seed(0)
    net = GPT(cfg.model)
    path = save_checkpoint(tmp_path / "ck", net, cfg, tok_file)
    assert "head.weight" not in load_file(str(path / "model.safetensors"))
    back = load_checkpoint(path).model
    assert back.head.weight is back.tok_emb.weight
    x = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(back.eval()(x), net.eval()(x))


@pytest.fixture
def tok_file(tmp_path):
    from gpt_study.data.tokenizer import WordTokenizer

    words = ["<unk>", "<sot>", "<eot>"] + [f"w{i}" for i in range(V - 3)]
    WordTokenizer(words).save(tmp_path / "tok.json")
    return tmp_path / "tok.json"


def test_resume_is_bit_exact_with_the_modern_options(tiny_prepared, tmp_path):
    model = {k: v for k, v in {**BASE, **OPTIONS["modern"]}.items() if k != "vocab_size"}
    model.update(attention_drop=0.1, residual_drop=0.1, embedding_drop=0.1, inner_drop=0.3)
    train = dict(data=str(tiny_prepared), context_size=16, batch_size=4, epoch=2)
    train.update(iters_per_epoch=4, dtype="float32", sample_tokens=4, lr=3e-3)
    whole = fit(
        build_config("tiny", train={**train, "save_root": str(tmp_path / "a")}, model=model)
    )
    first = dict(train, save_root=str(tmp_path / "b"), max_steps=5)
    fit(build_config("tiny", train=first, model=model))
    resumed = {"save_root": str(tmp_path / "b"), "max_steps": 0}
    again = fit(build_config(train=resumed, resume=True), resume=True)
    assert whole.step == again.step == 8
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "b" / "last").config.model.inner_dropout == 0.3


def test_zero_init_starts_every_block_as_the_identity_and_learns():
    torch.manual_seed(0)
    model = GPT(cfg_of("zero_init", embedding_drop=0.0))
    idx = torch.randint(0, V, (2, 9))
    emb = model.tok_emb(idx) + model.pos_emb.weight[:9]  # what the blocks pass through unchanged
    torch.testing.assert_close(model.hidden(idx), model.ln_f(emb))
    model(idx).logsumexp(-1).mean().backward()
    for block in model.blocks:
        assert block.attn.proj.weight.grad.abs().sum() > 0  # zero weights, not frozen ones
        assert block.mlp.proj.weight.grad.abs().sum() > 0
    # It changes only the initial weights: every export layout takes such a model.
    from gpt_study.export.hf import choose_layout

    assert choose_layout(cfg_of("zero_init")).name == choose_layout(cfg_of("study")).name == "gpt2"
    modern = choose_layout(cfg_of("modern", zero_init=True, qk_norm=False))
    assert modern.name == choose_layout(cfg_of("modern", qk_norm=False)).name == "llama"


def test_residual_scalars_start_as_the_plain_model_mix_the_embeddings_in_and_learn():
    """From 1 and 0 the scalars compute the model without them (the same weights otherwise);
    moved, block i reads a_i x + b_i x0; both get gradients."""
    torch.manual_seed(0)
    model = GPT(cfg_of("scalars", embedding_drop=0.0)).eval()
    plain = GPT(cfg_of("study", embedding_drop=0.0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_scale")})
    idx = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(model(idx), plain(idx), rtol=0, atol=0)
    with torch.no_grad():
        model.resid_scale.copy_(torch.tensor([0.5, 2.0]))
        model.x0_scale.copy_(torch.tensor([0.3, -1.0]))
    x0 = model.tok_emb(idx) + model.pos_emb.weight[:9]  # (B, T, C)
    x = x0
    for i, block in enumerate(plain.blocks):  # the sum written out, on the plain model's blocks
        x = block(([0.5, 2.0][i] * x + [0.3, -1.0][i] * x0).view(18, -1), 2).view(2, 9, -1)
    torch.testing.assert_close(model(idx), plain.head(plain.ln_f(x)))
    model.train()
    model(idx).logsumexp(-1).mean().backward()
    assert model.resid_scale.grad.abs().min() > 0 and model.x0_scale.grad.abs().min() > 0


def test_value_embeds_add_each_tokens_own_row_to_the_values_of_every_other_block():
    """Block i's values are the projection's plus row ``token`` of its own table, on the last
    block and every other one before it; with the tables at zero the model is the plain one."""
    torch.manual_seed(0)
    cfg = cfg_of("value_embeds", n_layers=3, embedding_drop=0.0)
    model = GPT(cfg).eval()
    assert sorted(model.value_embeds) == ["0", "2"] == [str(i) for i in cfg.value_embed_layers]
    idx = torch.randint(0, V, (2, 9))
    attn, table = model.blocks[2].attn, model.value_embeds["2"]
    x = torch.randn(18, cfg.d_model)
    _, _, v = attn.project(x, 2, None)  # (B, nh, T, hs)
    _, _, v_ve = attn.project(x, 2, None, table(idx).view(18, -1))
    rows = table.weight[idx].view(2, 9, cfg.n_heads, -1).transpose(1, 2)  # (B, nh, T, hs)
    torch.testing.assert_close(v_ve, v + rows)
    plain = GPT(cfg_of("study", n_layers=3, embedding_drop=0.0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "value_embeds" not in k})
    assert not torch.allclose(model(idx), plain(idx))
    with torch.no_grad():
        for t in model.value_embeds.values():
            t.weight.zero_()
    torch.testing.assert_close(model(idx), plain(idx), rtol=0, atol=0)


def test_logit_softcap_squashes_every_logit_and_the_loss_trains_through_it():
    """Logits are c * tanh(z / c) of the plain model's z, inside +-c, also through int8 weights
    (which swap the head); training's loss is the reference criterion on the capped logits,
    gradients included (not the chunked pass, whose gradients are the uncapped logits')."""
    torch.manual_seed(0)
    model = GPT(cfg_of("softcap", embedding_drop=0.0, logit_softcap=20.0)).eval()
    plain = GPT(cfg_of("study", embedding_drop=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in (model, plain):
            m.head.weight.mul_(100)  # logits well beyond the cap of 20
    idx = torch.randint(0, V, (2, 9))
    z = plain(idx)
    assert z.abs().max() > 40
    torch.testing.assert_close(model(idx), 20.0 * torch.tanh(z / 20.0))
    assert model(idx).abs().max() <= 20.0
    assert quantize_int8(copy.deepcopy(model))(idx).abs().max() <= 20.0
    y = torch.randint(0, V, (2, 9))
    got = LMLoss(model, 0.1, 2.0)(idx, y)
    want = reference_lm_loss(20.0 * torch.tanh(plain(idx) / 20.0), y, 0.1, 2.0)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(model.head.weight.grad, plain.head.weight.grad)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_compiles_to_the_eager_step(name):
    """--compile over every model option, training in bf16 with dropout on (so the CPU kernels
    run between the compiled graphs): the same loss and gradients as the eager step."""
    from test_kernels import assert_compiled_step_is_eager

    cfg = GPTConfig(**{**BASE, **OPTIONS[name], "max_len": 16, "residual_drop": 0.1})
    assert_compiled_step_is_eager(cfg, torch.bfloat16)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_use_dropout_off_trains_as_the_eval_forward_and_on_drops_again(name):
    """``--dropout_from``'s switch reaches every dropout of every option: off, a training-mode
    forward is the eval forward; on, each module is back at its configured rate."""
    rates = dict(attention_drop=0.2, residual_drop=0.2, embedding_drop=0.2, inner_drop=0.2)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**BASE, **OPTIONS[name], **rates}))
    idx = torch.randint(0, V, (2, 16))
    want = model.eval()(idx)
    model.train().use_dropout(False)
    assert torch.equal(model(idx), want)
    model.use_dropout(True)
    assert not torch.allclose(model(idx), want)
    fresh = GPT(model.config)
    assert [getattr(m, "p", None) for m in model.modules()] == [
        getattr(m, "p", None) for m in fresh.modules()
    ]
