"""Every model option, every path that runs the model, the same numbers.

One matrix: each option combination of tests/test_model_options.py and each preset (its options
on a tiny model), through every decoder and view that runs the model: the batch-1 fast loop, the
general loop, sampled decoding, a batch of prompts of different lengths, bf16 and int8 weights,
``introspect.trace``, the serve API's stream and the exported transformers model. Each is held
to the uncached forward pass (tokens, and logits within a stated tolerance). Windows are short
so that every generation slides at least twice.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from gpt_study.checkpoint import save_checkpoint
from gpt_study.config import EOT_ID, SOT_ID, GPTConfig, SampleConfig
from gpt_study.config.presets import PRESETS, preset_config
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.evaluate.introspect import trace
from gpt_study.generate import decode_row, generate_ids, quantize_int8, reference_generate
from gpt_study.generate.decode import reference_logits
from gpt_study.generate.window import crop_prompt
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError
from hf_helpers import hf_model_of
from serve_fixtures import VOCAB
from test_model_options import BASE, OPTIONS

V = len(VOCAB)
SIZES = {**BASE, "vocab_size": V}
WINDOW = 12  # positions up to 32: 30 new tokens slide the window at least twice
PROMPT = [SOT_ID, 5, 9, 17, 4]
N = 30
FP32 = dict(rtol=1e-5, atol=1e-4)  # cached against uncached fp32 logits (magnitudes ~10-40)


def _configs() -> dict[str, GPTConfig]:
    out = {name: GPTConfig(**{**SIZES, **opts}) for name, opts in OPTIONS.items()}
    for preset in PRESETS:
        options = dataclasses.asdict(preset_config(preset).model)
        out[f"preset {preset}"] = GPTConfig(**{**options, **SIZES})
    return out


CONFIGS = _configs()


def make_model(name: str) -> GPT:
    """A model of ``name``'s options whose greedy choices are not near-ties, whose gains and
    biases differ from 1 and 0, and whose sub-layers move the residual stream as much as the
    embeddings do (at the 0.02 init they barely do): a path that computed any layer otherwise, a
    norm, an activation or a bias, changes the tokens."""
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            elif pname.startswith(("blocks.", "value_embeds.")):  # as loud as the residual stream
                p.mul_(10)
        if model.head.bias is not None:
            model.head.bias[EOT_ID] = -1e4  # stories run to N tokens, through the slides
        else:
            model.tok_emb.weight[EOT_ID] = 0.0
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return make_model(request.param)


def test_the_matrix_covers_every_option_value():
    """A new option value must join the matrix: every choice of every model option appears."""
    for f in dataclasses.fields(GPTConfig):
        choices = f.metadata.get("choices")
        if choices:
            seen = {getattr(c, f.name) for c in CONFIGS.values()}
            assert seen >= set(choices), f"{f.name}: {set(choices) - seen} not in the matrix"
    bools = [f.name for f in dataclasses.fields(GPTConfig) if f.type in (bool, "bool")]
    assert len(bools) >= 8  # the booleans are found: tie_embeddings, bias, ... zero_init
    for name in bools:
        assert {getattr(c, name) for c in CONFIGS.values()} == {True, False}, name


def test_greedy_loops_equal_the_uncached_forward(model):
    want, want_logits = reference_generate(model, PROMPT, N, window=WINDOW, eot_id=EOT_ID)
    greedy = SampleConfig(greedy=True, max_new_tokens=N)
    for fast in (True, False):  # the batch-1 loop (the default for one prompt) and the general
        got = generate_ids(model, [PROMPT], greedy, WINDOW, return_logits=True, fast=fast)
        assert got.new_ids[0] == want, f"fast={fast}"
        torch.testing.assert_close(torch.stack(got.logits[0]), torch.stack(want_logits), **FP32)
    assert decode_row(model, PROMPT, greedy, WINDOW)[0] == want


SAMPLED = [
    SampleConfig(seed=3, max_new_tokens=N),  # the defaults: top-p 0.95, temperature, penalty
    SampleConfig(seed=4, max_new_tokens=N, top_k=5, top_p=0.8, repetition_penalty=1.3),
    SampleConfig(seed=5, max_new_tokens=N, top_p=1.0, repetition_penalty=1.0),
]


@pytest.mark.parametrize("sample", SAMPLED, ids=["defaults", "top-k", "plain"])
def test_sampled_fast_loop_equals_the_general_loop(model, sample):
    fast = generate_ids(model, [PROMPT], sample, WINDOW, return_logits=True)
    general = generate_ids(model, [PROMPT], sample, WINDOW, return_logits=True, fast=False)
    assert fast.new_ids == general.new_ids
    # and each draw was made from the uncached forward's logits (teacher forcing)
    seq = list(PROMPT)
    for tok, logits in zip(fast.new_ids[0], fast.logits[0], strict=True):
        torch.testing.assert_close(logits, reference_logits(model, seq, WINDOW), **FP32)
        seq.append(tok)


BATCH = [[SOT_ID], PROMPT, [SOT_ID] + [3 + i % 40 for i in range(20)]]  # the last > window


@pytest.mark.parametrize("keep", [None, 1, WINDOW], ids=["keep-default", "keep-1", "keep-window"])
def test_a_batch_of_prompts_of_different_lengths(model, keep):
    """Rows of different prompt lengths end at different positions (N new tokens each), and a
    slide drops the ended ones from the cache (re-encoded, or the rotary cache's rows picked):
    those still going decode as each would alone, at every keep (1: a slide every window;
    the window: one every token)."""
    greedy = SampleConfig(greedy=True, max_new_tokens=N)
    got = generate_ids(model, BATCH, greedy, WINDOW, keep=keep, fast=False)
    for p, row in zip(BATCH, got.new_ids, strict=True):
        assert row == reference_generate(model, p, N, window=WINDOW, keep=keep)[0]
    fast = generate_ids(model, [BATCH[2]], greedy, WINDOW, keep=keep)  # the batch-1 loop
    assert fast.new_ids[0] == got.new_ids[2]


@pytest.mark.parametrize("sample", SAMPLED, ids=["defaults", "top-k", "plain"])
def test_a_sampled_row_writes_the_story_its_prompt_gets_alone(model, sample):
    """Row r of a sampled batch draws from seed + r: its tokens are its prompt's alone with that
    seed (the batch-1 loop), whatever else is in the batch; a batch that starts at prompt i takes
    seed + i, so the stories do not depend on how prompts were batched."""
    prompts = BATCH + [PROMPT]  # the same prompt twice: two different stories
    together = generate_ids(model, prompts, sample, WINDOW, fast=False).new_ids
    for r, (p, row) in enumerate(zip(prompts, together, strict=True)):
        alone = dataclasses.replace(sample, seed=sample.seed + r)
        assert row == generate_ids(model, [p], alone, WINDOW).new_ids[0], r
    halves = [generate_ids(model, prompts[i : i + 2], sample.from_row(i), WINDOW, fast=False)
              for i in (0, 2)]  # fmt: skip
    assert [row for h in halves for row in h.new_ids] == together
    assert together[1] != together[3]  # one prompt, two rows, two draws


def test_a_sampled_batch_draws_from_the_uncached_logits(model):
    """A sampled batch draws each row's token from the logits the uncached forward gives that
    row's own sequence (teacher forcing), through the slides and after other rows ended."""
    sample = SampleConfig(seed=11, max_new_tokens=N)
    got = generate_ids(model, BATCH, sample, WINDOW, return_logits=True, fast=False)
    for p, row, kept in zip(BATCH, got.new_ids, got.logits, strict=True):
        seq = crop_prompt(p, WINDOW)
        for tok, logits in zip(row, kept, strict=True):
            torch.testing.assert_close(logits, reference_logits(model, seq, WINDOW), **FP32)
            seq.append(tok)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_against_its_own_uncached_forward(model, precision):
    """bf16 and int8 weights change the logits; the cache must not change them further. Each
    step's logits are compared with the same weights' uncached forward of the same sequence, and
    each greedy token must be the uncached argmax, or tie with it within the tolerance."""
    m = copy.deepcopy(model)
    m = m.to(torch.bfloat16) if precision == "bf16" else quantize_int8(m)
    # Of the largest logit but <eot>'s (held at -1e4 where there is a head bias): bf16 rounds
    # each product, and int8 weights multiply bf16 activations on every path.
    share = 0.02
    other = torch.arange(V) != EOT_ID
    full = reference_logits(model, PROMPT, WINDOW)
    tol = share * float(full[other].abs().max())
    # the weights' own error, 1-3% of the largest logit here; a layer the reduced model lost
    # (the cap of --logit_softcap, say) moves them by far more
    assert (reference_logits(m, PROMPT, WINDOW) - full)[other].abs().max() < 2 * tol
    greedy = SampleConfig(greedy=True, max_new_tokens=N)
    got = generate_ids(m, [PROMPT], greedy, WINDOW, return_logits=True)
    assert len(got.new_ids[0]) == N  # <eot> cannot be drawn (make_model): every step is checked
    seq = list(PROMPT)
    for tok, logits in zip(got.new_ids[0], got.logits[0], strict=True):
        want = reference_logits(m, seq, WINDOW)
        assert (logits - want)[other].abs().max() < tol
        assert want[tok] >= want.max() - tol
        seq.append(tok)


def test_trace_computes_the_forward_pass(model):
    ids = PROMPT + [3 + i % 40 for i in range(20)]
    t = trace(model, ids)
    with torch.inference_mode():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(t.logits, want, **FP32)
    torch.testing.assert_close(t.lens[-1], want, **FP32)
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(t.attention.shape[:-1]))
    assert not model.blocks[0].attn.keep_weights  # the flag is put back


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from gpt_study.serve.app import create_app
    from gpt_study.serve.limits import Limits
    from gpt_study.serve.registry import Models, Runs

    tmp = tmp_path_factory.mktemp("matrix")
    WordTokenizer(VOCAB).save(tmp / "tok.json")
    cfg = preset_config("tiny", train={"context_size": WINDOW})
    cfg = dataclasses.replace(cfg, model=model.config)
    path = save_checkpoint(tmp / "ckpt", model, cfg, tmp / "tok.json", {"step": 1})
    models = Models.load([str(path)], device="cpu")
    with TestClient(create_app(models, Runs(None), Limits(max_new_tokens=N))) as client:
        yield client


def test_the_serve_stream_writes_the_uncached_tokens(model, served):
    import json

    for body in (
        {"prompt": "once upon a time", "greedy": True, "max_new_tokens": N},
        {"prompt": "lily", "seed": 7, "max_new_tokens": N},
    ):
        events = [
            json.loads(line) for line in served.post("/api/generate", json=body).text.splitlines()
        ]
        start, tokens = events[0], [e["id"] for e in events if e["type"] == "token"]
        assert events[-1]["type"] == "done", events[-1]
        window, prompt = start["window"], start["prompt_ids"]
        if body.get("greedy"):
            want = reference_generate(model, prompt, N, window=window, eot_id=EOT_ID)[0]
        else:
            sample = SampleConfig(**start["settings"])
            want = generate_ids(model, [prompt], sample, window, fast=False).new_ids[0]
        assert tokens == want


# The matrix's models that export, and as which layout; every other one is refused in one line.
# A layout that learns an option (or loses one) changes this table on purpose.
EXPORTED_AS = {"study": "gpt2", "gelu_tanh": "gpt2", "tied": "gpt2", "zero_init": "gpt2"}
EXPORTED_AS |= {"llama_ve": "llama", "preset seed": "gpt2", "preset tiny": "gpt2"}
EXPORTED_AS |= {"preset cpu": "llama", "modern": "qwen3", "no-bias": "gpt2"}  # gpt2: zero biases
EXPORTED_AS |= {"softcap": "gpt2", "llama_softcap": "llama", "scalars": "gpt2"}  # our classes
EXPORTED_AS |= {"value_embeds": "gpt2", "neox": "gpt_neox", "relu2": "gpt2"}
EXPORTED_AS |= {"rmsnorm": "gpt2", "swiglu": "gpt2", "llama_ln": "llama", "rope": "llama"}
EXPORTED_AS |= {"qk_norm": "gpt2"}  # every combination exports: the stock class or ours


def test_exactly_the_expected_models_export():
    from gpt_study.export.hf import choose_layout

    for name, config in CONFIGS.items():
        try:
            got = choose_layout(config).name
        except UserError as e:
            assert "no transformers layout fits" in str(e)
            got = None
        assert got == EXPORTED_AS.get(name), name


def test_the_exported_model_computes_the_forward_pass(model):
    transformers = pytest.importorskip("transformers", reason="the export extra")
    hf = hf_model_of(model)  # every model exports (test_export: all combinations find a layout)
    ids = torch.tensor([PROMPT + [3 + i % 40 for i in range(20)]])
    with torch.inference_mode():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    assert diff < 1e-4
    # greedy at the model's positions (transformers does not slide): the uncached tokens
    n = model.config.max_len - len(PROMPT)
    want = reference_generate(model, PROMPT, n, window=model.config.max_len)[0]
    gen = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=EOT_ID
    )
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), generation_config=gen)
    assert out[0, len(PROMPT) :].tolist() == want
    # a batch that left-pads the prompt (evaluate --hf's stories): each row at its own positions,
    # which generate() derives from the attention mask
    longer, pad = PROMPT + [7, 8], 2
    ids = torch.tensor([[EOT_ID] * pad + PROMPT, longer])
    mask = torch.tensor([[0] * pad + [1] * len(PROMPT), [1] * len(longer)])
    gen.max_new_tokens = n - pad  # the longer row's positions end at max_len
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, generation_config=gen)
    assert out[0, len(longer) :].tolist() == want[: n - pad]
