"""Import: a transformers model becomes a checkpoint that computes what transformers computes.

Offline, on tiny assets made here: random GPT-2, Llama (tied or not, biases or not) and GPT-Neo
models, and a small byte-level BPE trained with ``tokenizers`` on the shared sample, saved with
``save_pretrained`` into a temp folder. Transformers is the oracle (minGPT's test of its GPT-2):
logits within 1e-4 in fp32 and the same greedy tokens; export then import gives back the same
weights; what no option computes is refused in one line; an imported model's own special ids
(GPT-2's ``<|endoftext|>`` as both ``<sot>`` and ``<eot>``, Llama's ``<s>``/``</s>`` away from 1 and
2) flow through prepare, the loss, validation, generation and evaluation; fine-tuning it lowers
the loss and resumes bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_story
from gpt_study.checkpoint import load_checkpoint
from gpt_study.cli import main
from gpt_study.config import SampleConfig
from gpt_study.generate import generate_ids
from gpt_study.runtime.errors import UserError

transformers = pytest.importorskip(
    "transformers", reason="transformers is in the test extra: pip install -e '.[test]'"
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from gpt_study.export import export_hf  # noqa: E402
from gpt_study.export.imports import import_hf  # noqa: E402
from test_export import _bpe as study_bpe  # noqa: E402
from test_export import _checkpoint as study_checkpoint  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
SIZES = dict(n_layer=2, n_head=4, n_embd=32)
END = "<|endoftext|>"


def _stories(n: int, skip: int = 0) -> list[str]:
    """``n`` stories of the shared sample (synthetic ones where it is not on this machine)."""
    path = SAMPLE / "train.txt"
    if path.exists():
        with path.open(encoding="utf-8") as f:
            text = f.read(1_500_000)
        stories = [s.strip() for s in text.split(END) if len(s.strip()) > 300]
        return stories[skip : skip + n]
    import random

    rng = random.Random(skip)
    return [synthetic_story(rng) * 3 for _ in range(n)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _stories(300)


def _bpe(texts: list[str], specials: list[str], end: str | None = None) -> Tokenizer:
    """A 300-entry byte-level BPE; ``end`` added after training (last id, as GPT-2's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if end:
        tok.add_special_tokens([end])
    return tok


def _loud(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from the 0.02 init, so logits are tens apart and greedy choices not ties: a
    mapping that misplaced any weight would change them."""
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 if vocab in p.shape else 0.3)  # the embedding and head wider
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def gpt2_folder(folder: Path, texts: list[str], **config) -> Path:
    """GPT-2 as published: <|endoftext|> (the last id) is bos, eos and unk; tied; gelu_new."""
    tok = _bpe(texts, [], END)
    end = tok.token_to_id(END)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=END, eos_token=END, unk_token=END
    )
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=32, bos_token_id=end, eos_token_id=end,
        **SIZES, **config,
    )  # fmt: skip
    _loud(transformers.GPT2LMHeadModel(cfg)).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def llama_folder(folder: Path, texts: list[str], **config) -> Path:
    """Llama with its specials away from gpt-study's 0, 1, 2: eos 1, bos 2, unk 3."""
    tok = _bpe(texts, ["<pad>", "</s>", "<s>", "<unk>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_theta=500.0, bos_token_id=2, eos_token_id=1, **config,
    )  # fmt: skip
    _loud(transformers.LlamaForCausalLM(cfg)).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def neox_folder(folder: Path, texts: list[str], **config) -> Path:
    """GPT-NeoX as Pythia's tokenizer has it (<|endoftext|> at id 0: bos, eos and unk), with
    blocks one after the other and rotary positions on whole heads unless ``config`` says."""
    tok = _bpe(texts, [END, "<|padding|>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=END, eos_token=END, unk_token=END, pad_token="<|padding|>"
    )
    rope = {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0}
    rope.update(config.pop("rope", {}))
    cfg = transformers.GPTNeoXConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
        rope_parameters=rope, use_parallel_residual=False, bos_token_id=0, eos_token_id=0,
        **config,
    )  # fmt: skip
    _loud(transformers.GPTNeoXForCausalLM(cfg)).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


NEO_WINDOW = 16  # the local layers' window, half the 32 positions


def neo_folder(folder: Path, texts: list[str], **config) -> Path:
    """GPT-Neo as the TinyStories models are (GPT-2's tokenizer; global and local layers in turn,
    tied, gelu_new), 8 dimensions a head (sqrt 8 is inexact in floats). Its queries are drawn
    sqrt(head_dim) smaller than _loud's, as a model trained without the scale learns them."""
    tok = _bpe(texts, [], END)
    end = tok.token_to_id(END)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=END, eos_token=END, unk_token=END
    )
    settings = dict(attention_types=[[["global", "local"], 1]], window_size=NEO_WINDOW)
    cfg = transformers.GPTNeoConfig(
        vocab_size=tok.get_vocab_size(), max_position_embeddings=32, hidden_size=32,
        num_layers=2, num_heads=4, bos_token_id=end, eos_token_id=end, **{**settings, **config},
    )  # fmt: skip
    model = _loud(transformers.GPTNeoForCausalLM(cfg))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.attention.q_proj.weight.div_(8**0.5)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


LAYOUTS = {
    "gpt2 as published: tied, gelu_new": (gpt2_folder, {}),
    "gpt-neo as TinyStories': global and local, tied, gelu_new": (neo_folder, {}),
    "gpt-neo global only, untied, exact gelu": (
        neo_folder,
        dict(attention_types=[[["global"], 2]], tie_word_embeddings=False, activation_function="gelu"),
    ),
    "gpt-neox untied, exact gelu": (neox_folder, {}),
    "gpt2 untied, exact gelu": (gpt2_folder, dict(tie_word_embeddings=False, activation_function="gelu")),
    "llama tied, biases": (llama_folder, dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "llama untied, no biases": (llama_folder, dict(tie_word_embeddings=False)),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(LAYOUTS))
def imported(request, tmp_path_factory, texts):
    make, config = LAYOUTS[request.param]
    tmp = tmp_path_factory.mktemp("import")
    folder = make(tmp / "hf", texts, **config)
    lines: list[str] = []
    result = import_hf(folder, tmp / "ckpt", log=lines.append)
    return request.param, folder, result, lines


def _hf(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_the_checkpoint_computes_transformers_logits_and_greedy_tokens(imported):
    name, folder, result, lines = imported
    ckpt = load_checkpoint(result.out)  # read back from disk, as every command reads it
    hf, model, tok = _hf(folder), ckpt.model.eval(), ckpt.tokenizer
    T = model.config.max_len  # 32; GPT-Neo with local layers: their window (the positions kept)
    assert T == (NEO_WINDOW if "global and local" in name else 32)
    idx = torch.randint(0, model.config.vocab_size, (3, T), generator=torch.Generator())
    with torch.no_grad():
        theirs, ours = hf(idx).logits, model(idx)
    assert theirs.abs().max() > 10  # the tolerance means something at these magnitudes
    assert (theirs - ours).abs().max().item() <= 1e-4
    assert result.checked.logits_diff <= 1e-4 and result.checked.greedy_equal

    n = T - 1
    want = generate_ids(
        model, [[tok.sot_id]], SampleConfig(greedy=True, max_new_tokens=n), T, eot_id=tok.eot_id
    ).new_ids[0]
    gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=tok.eot_id)
    got = hf.generate(torch.tensor([[tok.sot_id]]), generation_config=gen)[0, 1:].tolist()
    assert got == want and len(want) > 5

    # The tokenizer: the model's own ids, and its own roles for <sot>, <eot>, <unk>.
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    for text in _stories(3, skip=400):
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False).input_ids
        assert tok.decode(tok.encode(text)) == text
    if result.layout in ("gpt2", "gpt_neox", "gpt_neo"):  # one <|endoftext|>: bos and eos
        end = hf_tok.convert_tokens_to_ids(END)
        assert (tok.sot_id, tok.eot_id, tok.unk_id, tok.special_ids) == (end, end, None, (end,))
        assert ckpt.config.model.mlp == ("gelu" if "exact" in name else "gelu_tanh")
    else:
        assert (tok.sot_id, tok.eot_id, tok.unk_id, tok.special_ids) == (2, 1, 3, (1, 2))
        assert ckpt.config.model.rope_base == 500.0
    assert ckpt.state["imported"]["logits_max_abs_diff"] == result.checked.logits_diff
    assert any("logits max abs difference" in line for line in lines)


def test_a_window_past_the_kept_positions_is_refused_in_one_line(tmp_path, texts, capsys):
    """GPT-Neo's local layers are computed exactly only within their window: the checkpoint keeps
    that many positions, and a longer --window is refused as for any learned positions."""
    folder = neo_folder(tmp_path / "hf", texts)
    lines: list[str] = []
    ckpt = import_hf(folder, tmp_path / "ckpt", log=lines.append).out
    assert any(f"keeps those {NEO_WINDOW} of its 32 learned positions" in line for line in lines)
    args = ["generate", "--checkpoint", str(ckpt), "--prompt", "Once", "--window", "32"]
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"use --window {NEO_WINDOW} or less" in err[0], err


def test_generate_runs_on_the_imported_checkpoint(imported, capsys):
    _, _, result, _ = imported
    args = [
        "--checkpoint",
        str(result.out),
        "--prompt",
        "Once upon a time",
        "--max_new_tokens",
        "8",
    ]
    assert main(["generate", *args, "--greedy", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip().startswith("Once upon a time")


def test_serve_writes_and_scores_with_the_imported_checkpoint(imported):
    pytest.importorskip("fastapi", reason="the serve extra")
    from fastapi.testclient import TestClient

    from gpt_study.serve.app import create_app
    from gpt_study.serve.registry import Models

    _, _, result, _ = imported
    tok = load_checkpoint(result.out).tokenizer
    with TestClient(create_app(Models.load([str(result.out)], device="cpu"))) as client:
        body = {"prompt": "Once upon a time", "greedy": True, "max_new_tokens": 6}
        events = [json.loads(x) for x in client.post("/api/generate", json=body).text.splitlines()]
        assert events[0]["type"] == "start" and len(events[-1]["ids"]) > 0
        scored = client.post("/api/tokens", json={"text": "Once upon a time.", "top_k": 2}).json()
    ids = [t["id"] for t in scored["tokens"]]
    assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id  # a story with the model's own ends
    assert ids == tok.encode("Once upon a time.", sot=True, eot=True)


EXPORTED = {
    "the study's model: head bias (our GPT-2 class)": (True, None),
    "tied GPT-2, tanh GELU, stock class": (False, {"tie_embeddings": True, "mlp": "gelu_tanh"}),
    "GPT-2 without biases (nanoGPT's), written with zeros": (
        False, {"bias": False, "norm_bias": False, "head_bias": False},
    ),
    "llama tied, no biases": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "tie_embeddings": True, "bias": False},
    ),
    "llama tied, value embeddings (our Llama class)": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "tie_embeddings": True, "bias": False, "value_embeds": True, "n_layers": 3},
    ),
    "llama tied, soft-capped logits (our Llama class, no value embeddings)": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "tie_embeddings": True, "bias": False, "logit_softcap": 4.0},
    ),
    "llama, residual scalars (our Llama class)": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "residual_scalars": True},
    ),
    "GPT-2 tied, residual scalars (our GPT-2 class)": (
        True, {"tie_embeddings": True, "residual_scalars": True},
    ),
    "GPT-2, value embeddings (our GPT-2 class)": (True, {"value_embeds": True, "n_layers": 3}),
    "GPT-2, relu2, head bias (our GPT-2 class)": (True, {"mlp": "relu2"}),
    "GPT-2, rmsnorm and swiglu (our GPT-2 class)": (True, {"norm": "rmsnorm", "mlp": "swiglu"}),
    "llama, layernorm and a head bias (our Llama class)": (
        True,
        {"positions": "rope", "norm": "layernorm", "mlp": "swiglu", "tie_embeddings": True},
    ),
    "llama, relu2 without a gate, biases (our Llama class)": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "relu2", "head_bias": False},
    ),
    "rope and the study's other options: llama, layernorm, gelu, head bias (our Llama class)": (
        True, {"positions": "rope"},
    ),
    "GPT-2, qk-norm (our GPT-2 class)": (True, {"qk_norm": True}),
    "llama, qk-norm with biases (our Llama class)": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "qk_norm": True},
    ),
    "llama, layernorm without its biases (our Llama class, zeros there)": (
        False,
        {"positions": "rope", "norm": "layernorm", "mlp": "swiglu", "head_bias": False,
         "norm_bias": False},
    ),
    "GPT-NeoX: rope, layernorm, relu2": (
        False, {"positions": "rope", "mlp": "relu2", "head_bias": False},
    ),
    "GPT-NeoX tied, no biases, written with zeros": (
        False, {"positions": "rope", "head_bias": False, "tie_embeddings": True, "bias": False,
                "norm_bias": False},
    ),
    "no head bias, soft-capped logits (our GPT-2 class, a zero head bias)": (
        False, {"head_bias": False, "logit_softcap": 4.0},
    ),
    "qwen3: each head's queries and keys normalised": (
        False,
        {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False,
         "bias": False, "qk_norm": True},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPORTED))
def test_export_then_import_gives_back_the_same_weights_and_logits(tmp_path, name):
    head_bias, options = EXPORTED[name]
    path = study_checkpoint(tmp_path, study_bpe(), head_bias, options)
    export_hf(path, tmp_path / "hf", log=lambda _: None)
    result = import_hf(tmp_path / "hf", tmp_path / "back", log=lambda _: None)
    a, b = load_checkpoint(path), load_checkpoint(result.out)
    wa, wb = a.model.state_dict(), b.model.state_dict()
    for k in wb.keys() - wa.keys():  # biases GPT-2 always has: zeros, back as zero biases
        assert k.endswith(".bias") and not wb[k].any(), k
    options = options or {}
    gpt2 = options.get("positions", "learned") == "learned"
    layernorm = options.get("norm", "layernorm") == "layernorm"
    always = gpt2 or (layernorm and options.get("mlp") != "swiglu")  # GPT-2, GPT-NeoX
    # these always have biases on their linears and LayerNorms, our Llama class on its
    # LayerNorms, our GPT-2 class (a cap) on its head
    zeros = {"bias", "norm_bias"} if always and not options.get("bias", True) else set()
    if layernorm and not options.get("norm_bias", True):
        zeros.add("norm_bias")
    if gpt2 and options.get("logit_softcap") and not options.get("head_bias", True):
        zeros.add("head_bias")
    assert wa.keys() <= wb.keys() and (wa.keys() != wb.keys()) == bool(zeros)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    drop = ("attention_drop", "residual_drop", "embedding_drop", "inner_drop", *zeros)
    ca, cb = ({k: v for k, v in vars(c.config.model).items() if k not in drop} for c in (a, b))
    assert ca == cb
    idx = torch.randint(0, a.model.config.vocab_size, (2, 32), generator=torch.Generator())
    with torch.no_grad():
        assert torch.equal(a.model.eval()(idx), b.model.eval()(idx))
    # The exported tokenizer comes back as the hf kind, with gpt-study's roles at 1, 2, 0.
    t = b.tokenizer
    assert (t.kind, t.sot_id, t.eot_id, t.unk_id) == ("hf", 1, 2, 0)
    text = "once upon a time, there was a little girl named lily."
    assert t.encode(text, sot=True) == a.tokenizer.encode(text, sot=True)


def test_an_imported_checkpoint_exports_again_with_its_own_roles(imported, tmp_path):
    """Import, then export (a fine-tuned import goes back to transformers so): the folder's
    bos/eos are the model's own, its check passes, and importing it again changes nothing."""
    _, _, result, _ = imported
    first = load_checkpoint(result.out)
    tok = first.tokenizer
    exported = export_hf(result.out, tmp_path / "hf", log=lambda _: None)
    assert exported.checked.logits_diff <= 1e-4 and exported.checked.greedy_equal
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    for d in (config, generation):
        assert (d["bos_token_id"], d["eos_token_id"]) == (tok.sot_id, tok.eot_id)
    again = load_checkpoint(import_hf(tmp_path / "hf", tmp_path / "again", log=lambda _: None).out)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    t = again.tokenizer
    assert (t.sot_id, t.eot_id, t.unk_id) == (tok.sot_id, tok.eot_id, tok.unk_id)


def _ours():
    from gpt_study.export import modeling_gpt_study

    return modeling_gpt_study


def _saved(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    return folder


REFUSED = {
    "Pythia's parallel blocks": (
        lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
            "partial_rotary_factor": 1.0})),
        "use_parallel_residual True (attention and feed-forward side by side",
    ),
    "Pythia's rotary on a quarter of each head": (
        lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, use_parallel_residual=False)),
        "partial_rotary_factor 0.25 (rotary positions on part of each head",
    ),
    "OPT": (
        lambda: transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=300, max_position_embeddings=32, hidden_size=32, num_hidden_layers=1,
            ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32)),
        "it is a OPTForCausalLM (no gpt-study layout computes it)",
    ),
    "GPT-Neo with another LayerNorm eps": (
        lambda: transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
            vocab_size=300, max_position_embeddings=32, hidden_size=32, num_layers=2,
            num_heads=4, attention_types=[[["global", "local"], 1]], bos_token_id=0,
            eos_token_id=0, layer_norm_epsilon=1e-6)),
        "GPTNeoForCausalLM with layer_norm_epsilon 1e-06 (another LayerNorm eps",
    ),
    "grouped-query Llama": (
        lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)),
        "num_key_value_heads 2 but num_attention_heads 4 (grouped-query attention",
    ),
    "Qwen3 with sliding windows": (
        lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
            vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, head_dim=8, rms_norm_eps=1e-5,
            use_sliding_window=True, sliding_window=8, max_window_layers=1)),
        "use_sliding_window True (sliding-window attention",
    ),
    "Qwen3 with attention biases": (
        lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
            vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, head_dim=8, rms_norm_eps=1e-5,
            attention_bias=True)),
        "attention_bias True (biases on the attention's projections only",
    ),
    "Llama's default eps": (
        lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=4)),
        "rms_norm_eps 1e-06 (another RMSNorm eps",
    ),
    "GPT-2 scaled by layer": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=300, n_positions=32, scale_attn_by_inverse_layer_idx=True, **SIZES)),
        "scale_attn_by_inverse_layer_idx True",
    ),
    "value embeddings in other layers": (
        lambda: _ours().GPTStudyLlamaForCausalLM(_ours().GPTStudyLlamaConfig(
            vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, rms_norm_eps=1e-5, value_embed_layers=[0])),
        "value_embed_layers [0] (value embeddings in other layers; gpt-study computes [1])",
    ),
    "GPT-2 with a SiLU, no gate": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=300, n_positions=32, activation_function="silu", **SIZES)),
        "gated_mlp False but activation_function 'silu' (a gate on another activation than "
        "SiLU, or SiLU without a gate)",
    ),
    "GPT-2 with a ReLU": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=300, n_positions=32, activation_function="relu", **SIZES)),
        "activation_function 'relu' (gpt-study computes 'gelu', 'gelu_new'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_no_option_computes_is_refused_in_one_line(tmp_path, capsys, name):
    make, message = REFUSED[name]
    folder = _saved(tmp_path / "hf", make())
    out = tmp_path / "ckpt"
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["import", "--hf", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if name == "OPT":  # what it does read, and how to score this one instead
        assert "GPTNeoForCausalLM" in err[0] and f"evaluate --hf {folder}" in err[0]
    assert not out.exists()


def test_cli_imports_replaces_its_own_and_refuses_in_one_line(tmp_path, texts, capsys, monkeypatch):
    folder = gpt2_folder(tmp_path / "hf", texts)
    out = tmp_path / "ckpt"
    capsys.readouterr()
    for _ in range(2):  # the second import replaces the checkpoint the first wrote
        assert main(["import", "--hf", str(folder), "--out", str(out)]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert [line.split(":")[0] for line in err] == ["import"] * 3, err
    (out / "notes.txt").write_text("mine")
    cases = [
        (str(folder), str(out), "did not write (notes.txt)"),
        (str(folder), str(folder), "holds the input"),
        (str(tmp_path / "nowhere"), str(tmp_path / "x"), "no such folder"),
    ]
    for source, target, message in cases:
        assert main(["import", "--hf", source, "--out", target]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (out / "notes.txt").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert main(["import", "--hf", str(folder), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[export]"' in err[0], err


def _corpus(tmp: Path) -> list[str]:
    """A train and a valid file of the shared sample's stories."""
    for name, stories in (("train.txt", _stories(240, skip=300)), ("valid.txt", _stories(40))):
        (tmp / name).write_text(f"\n{END}\n".join(stories), encoding="utf-8")
    return [str(tmp / "train.txt"), str(tmp / "valid.txt")]


TRAIN = dict(
    context_size=32, batch_size=4, epoch=2, iters_per_epoch=6, dtype="float32", sample_tokens=8,
    print_interval=3, lr=3e-3, lr_schedule="cosine", warmup_steps=3, grad_accum=2, threads=1,
)  # fmt: skip
DROPOUT = dict(attention_drop=0.1, residual_drop=0.1, embedding_drop=0.1)


def test_a_fine_tuned_import_learns_uses_its_own_specials_and_resumes_bit_for_bit(
    tmp_path, texts, monkeypatch
):
    from gpt_study.data.dataset import open_prepared
    from gpt_study.evaluate.report import evaluate_split
    from gpt_study.train import fit as fit_module
    from gpt_study.train.fit import fit
    from gpt_study.train.setup import build_config

    ckpt = import_hf(llama_folder(tmp_path / "hf", texts), tmp_path / "ckpt", log=lambda _: None)
    ckpt = ckpt.out
    corpus, prep = _corpus(tmp_path), tmp_path / "prep"
    given = ["--tokenizer_from", str(ckpt), "--out", str(prep), "--workers", "1"]
    assert main(["prepare", "--data", *corpus, *given]) == 0
    data = open_prepared(prep)
    assert data.meta["specials"] == {"<unk>": 3, "<sot>": 2, "<eot>": 1}
    ids = data.tokens("valid")
    assert ids[0] == 2 and int((ids == 1).sum()) == int((ids == 2).sum()) == 40  # <s> ... </s>
    stories = ["--samples", "1", "--max_new_tokens", "8", "--json", str(tmp_path / "ev.json")]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(prep), *stories]) == 0
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["valid"]["unk_rate"] == 0.0 and report["stories"]["stories"] > 0
    before = evaluate_split(load_checkpoint(ckpt).model, prep, 32)["nll"]

    seen: list[tuple[int, ...]] = []

    class Recording(fit_module.LMLoss):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.special_ids)

    monkeypatch.setattr(fit_module, "LMLoss", Recording)
    train = dict(TRAIN, init_from=str(ckpt), data=str(prep), sp_weight=2.0)
    whole = fit(
        build_config("tiny", train={**train, "save_root": str(tmp_path / "a")}, model=DROPOUT)
    )
    assert seen == [(1, 2)]  # the loss weighs Llama's </s> and <s>, read from the tokenizer
    after = evaluate_split(load_checkpoint(tmp_path / "a" / "last").model, prep, 32)["nll"]
    assert whole.step == 12 and after < before - 0.5, (before, after)

    first = fit(
        build_config(
            "tiny", train={**train, "save_root": str(tmp_path / "b"), "max_steps": 8}, model=DROPOUT
        )
    )
    assert first.step == 8
    second = fit(
        build_config(train={"save_root": str(tmp_path / "b"), "max_steps": 0}, resume=True),
        resume=True,
    )
    assert second.step == 12
    a, b = (load_checkpoint(tmp_path / r / "last", optimizer=True) for r in ("a", "b"))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for i, st in a.optimizer_state["optimizer"]["state"].items():
        assert torch.equal(
            st["exp_avg_sq"], b.optimizer_state["optimizer"]["state"][i]["exp_avg_sq"]
        )
    assert second.last_valid["valid_nll"] == whole.last_valid["valid_nll"]
    runs = [str(tmp_path / r) for r in ("a", "b")]
    assert main(["compare", *runs, "--no_stories", "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.json").exists()


@pytest.mark.parametrize("layout", ["llama", "gpt2", "gpt_neo"])
def test_an_imported_checkpoint_scores_the_stream_evaluate_hf_scores(layout, tmp_path, texts):
    """Your fine-tune against the published model is honest only on one stream: evaluate on the
    imported checkpoint's prepared folder and evaluate --hf on its source read the same targets
    and give the same bits per byte, with distinct markers (Llama's <s> and </s>) and with one
    token for both (GPT-2's <|endoftext|>, written once between stories: join_stories). GPT-Neo
    with local layers is scored in windows of their width both ways (the positions it keeps)."""
    make = {"llama": llama_folder, "gpt2": gpt2_folder, "gpt_neo": neo_folder}[layout]
    folder = make(tmp_path / "hf", texts)
    ckpt = import_hf(folder, tmp_path / "ckpt", log=lambda _: None).out
    prep = tmp_path / "prep"
    given = ["--tokenizer_from", str(ckpt), "--out", str(prep), "--workers", "1"]
    assert main(["prepare", "--data", *_corpus(tmp_path), *given]) == 0
    common = ["--data", str(prep), "--device", "cpu", "--dtype", "float32", "--no_stories"]
    common += ["--window", str(NEO_WINDOW)] if layout == "gpt_neo" else []
    for flag, source, out in (("--checkpoint", ckpt, "a"), ("--hf", folder, "b")):
        assert main(["evaluate", flag, str(source), *common, "--json", str(tmp_path / out)]) == 0
    ours, theirs = (json.loads((tmp_path / f).read_text())["valid"] for f in ("a", "b"))
    assert ours["bytes"] == theirs["bytes"] and ours["tokens"] == theirs["tokens"]
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], abs=1e-4)
    from gpt_study.data.dataset import open_prepared
    from gpt_study.data.tokenizer import load_tokenizer
    from gpt_study.evaluate.introspect import text_ids

    ids = open_prepared(prep).tokens("valid")
    marker = int(ids[0])
    shared = layout != "llama"  # GPT-2's tokenizer: one <|endoftext|> between stories
    ends = int((ids == marker).sum()) if shared else int((ids == 1).sum())
    assert ends == 40 + shared  # 40 stories: one marker more than stories, or </s> each
    pasted = (tmp_path / "valid.txt").read_text(encoding="utf-8")  # serve's pasted text: the same
    tok = load_tokenizer(ckpt / "tokenizer.json")
    assert text_ids(tok, pasted)[0] == ids.tolist()


def test_a_shared_marker_is_written_once_between_stories_whatever_the_batches(tmp_path):
    from gpt_study.data.prepare.ids import SplitWriter
    from gpt_study.data.tokenizer.base import join_stories

    m = 9
    stories = [[m, 1, 2, m], [m, 3, m], [m, 4, 5, 6, m]]
    flat = np.array([i for s in stories for i in s])
    want = [m, 1, 2, m, 3, m, 4, 5, 6, m]
    assert join_stories(flat, m).tolist() == want
    assert join_stories(flat, None).tolist() == flat.tolist()  # distinct markers: as stored
    writer = SplitWriter(tmp_path / "x.bin", np.uint16, m)
    for story in stories:  # one batch each: the marker before a batch is remembered
        writer.write(np.array(story), np.array([1]), np.array([1]))
    writer.close()
    assert np.fromfile(tmp_path / "x.bin", dtype=np.uint16).tolist() == want
    assert writer.tokens == len(want) and writer.stories == 3


def test_init_from_refuses_another_tokenizer_and_architecture_flags(tmp_path, texts, tiny_prepared):
    from gpt_study.train.setup import build_config

    ckpt = import_hf(gpt2_folder(tmp_path / "hf", texts), tmp_path / "ckpt", log=lambda _: None).out
    train = dict(TRAIN, init_from=str(ckpt), save_root=str(tmp_path / "run"))
    with pytest.raises(UserError, match=f"prepare --tokenizer_from {ckpt}"):
        build_config("tiny", train={**train, "data": str(tiny_prepared)})
    prep = tmp_path / "prep"
    corpus = _corpus(tmp_path)
    given = ["prepare", "--data", *corpus, "--tokenizer_from", str(ckpt), "--out", str(prep)]
    assert main([*given, "--vocab_size", "4096"]) == 2  # the tokenizer's size is 301
    assert main(["prepare", "--data", *corpus, "--tokenizer", "hf", "--out", str(prep)]) == 2
    assert not prep.exists()
    assert main([*given, "--workers", "1"]) == 0
    with pytest.raises(
        UserError, match="--n_layers 3, but the model options come from --init_from"
    ):
        build_config("tiny", train={**train, "data": str(prep)}, model={"n_layers": 3})
    cfg = build_config("tiny", train={**train, "data": str(prep)}, model=DROPOUT)
    assert cfg.model.mlp == "gelu_tanh" and cfg.model.tie_embeddings
    assert cfg.model.residual_drop == 0.1 and cfg.data.tokenizer == "hf"
    assert cfg.model.inner_drop == 0.0  # GPT-2's feed-forward has no inner dropout
    (tmp_path / "runs" / "best").mkdir(parents=True)
    (tmp_path / "runs" / "best" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="is a run folder"):
        build_config(
            "tiny", train={**train, "data": str(prep), "init_from": str(tmp_path / "runs")}
        )


def test_the_scorer_counts_no_unk_where_the_vocabulary_has_none(imported):
    """GPT-2's vocabulary has no <unk>: id 0 ("!") is a word like any other, not counted as one."""
    _, _, result, _ = imported
    ckpt = load_checkpoint(result.out)
    from gpt_study.evaluate.report import evaluate_tokens

    tokens = np.array([ckpt.tokenizer.sot_id, 0, 0, 5, 0, ckpt.tokenizer.eot_id] * 4)
    sums = evaluate_tokens(ckpt.model, tokens, 8, tokenizer=ckpt.tokenizer)
    unk = 0 if ckpt.tokenizer.unk_id is None else int((tokens[1:] == ckpt.tokenizer.unk_id).sum())
    assert sums["unk"] == unk
    assert json.loads((result.out / "config.json").read_text())["data"]["tokenizer"] == "hf"


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_tokenizer_from_a_study_checkpoint_gives_its_folders_ids(tmp_path, kind):
    """``prepare --tokenizer_from`` a gpt-study checkpoint encodes as the folder it was trained on
    did, id for id; ``train --init_from`` it takes either folder and refuses another."""
    from gpt_study.checkpoint import save_checkpoint
    from gpt_study.config.presets import preset_config
    from gpt_study.data.tokenizer import load_tokenizer
    from gpt_study.model.gpt import GPT
    from gpt_study.train.setup import build_config

    corpus = _corpus(tmp_path)[:1]  # valid held out of train
    own, given = tmp_path / "own", tmp_path / "given"
    size = ["--vocab_size", "1000"]
    assert main(["prepare", "--data", *corpus, "--tokenizer", kind, *size, "--out", str(own)]) == 0
    n = load_tokenizer(own / "tokenizer.json").vocab_size
    cfg = preset_config(
        "tiny", model={"vocab_size": n, "max_len": 32, "n_layers": 1}, train={"context_size": 32}
    )
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg.model), cfg, own / "tokenizer.json")
    assert (
        main(["prepare", "--data", *corpus, "--tokenizer_from", str(ckpt), "--out", str(given)])
        == 0
    )
    for split in ("train", "valid"):
        assert (own / f"{split}.bin").read_bytes() == (given / f"{split}.bin").read_bytes()
    train = dict(TRAIN, init_from=str(ckpt), save_root=str(tmp_path / "run"))
    for folder in (own, given):
        assert build_config("tiny", train={**train, "data": str(folder)}).model.n_layers == 1
    other = tmp_path / "other"
    flip = {"word": "bpe", "bpe": "word"}[kind]
    assert (
        main(["prepare", "--data", *corpus, "--tokenizer", flip, *size, "--out", str(other)]) == 0
    )
    with pytest.raises(UserError, match="was prepared with another tokenizer"):
        build_config("tiny", train={**train, "data": str(other)})


def test_each_command_without_transformers_says_which_and_how_to_install(monkeypatch):
    """The three commands that need transformers name themselves in one line, through the one
    rule of runtime.errors.require."""
    import sys

    from gpt_study.evaluate import hf as evaluate_hf
    from gpt_study.export import imports, verify

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers: ImportError
    for fn, who in (
        (evaluate_hf.require_transformers, "evaluate --hf"),
        (verify.require_transformers, "export"),
        (imports.require_transformers, "import"),
    ):
        with pytest.raises(UserError) as e:
            fn()
        assert (
            str(e.value)
            == f'{who} needs transformers: pip install -e ".[export]" in the gpt-study checkout'
        )


DISAGREE = {
    "logits": {"logits_diff": 2e-4},
    "greedy": {"greedy_equal": False},
    "nan": {"logits_diff": float("nan")},
}


@pytest.mark.parametrize("what", list(DISAGREE))
def test_export_and_import_refuse_by_one_rule(tmp_path, capsys, monkeypatch, what):
    """Export published a folder whose greedy tokens differed (it held the logits only, import
    both): now each refuses every disagreement in one line and writes nothing."""
    import dataclasses

    from gpt_study.export import imports, verify

    path = study_checkpoint(tmp_path, study_bpe(), False)
    export_hf(path, tmp_path / "hf", log=lambda _: None)  # a good folder to import
    real = verify.compare

    def disagreeing(*a, **kw):
        return dataclasses.replace(real(*a, **kw), **DISAGREE[what])

    monkeypatch.setattr(verify, "compare", disagreeing)
    monkeypatch.setattr(imports, "compare", disagreeing)
    expected = "greedy tokens differ" if what == "greedy" else "logits max abs difference"
    for args, out in (
        (["export", "--checkpoint", str(path)], tmp_path / "again"),
        (["import", "--hf", str(tmp_path / "hf")], tmp_path / "back"),
    ):
        capsys.readouterr()
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()  # export's progress lines, then it
        assert expected in err[-1] and "Traceback" not in "".join(err), err
        assert not out.exists()


def _damage(folder: Path, how: str, texts: list[str], tmp: Path) -> str:
    """A transformers folder damaged one way, or a path that is none; returns what --hf gets."""
    if how in ("a missing local folder", "a file"):
        (tmp / "notes.txt").write_text("mine")
        return str(tmp / ("nope" if how == "a missing local folder" else "notes.txt"))
    if how == "a gpt-study checkpoint, not a transformers folder":
        (tmp / "study").mkdir()
        return str(study_checkpoint(tmp / "study", study_bpe(), True, None))
    gpt2_folder(folder, texts)
    if how == "truncated weights":
        with open(folder / "model.safetensors", "r+b") as f:
            f.truncate(500)
    else:  # another vocabulary size than the weights'
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 5000}))
    return str(folder)


DAMAGED = {
    "truncated weights": "deserializing header",
    "a config of another vocabulary size": "other sizes than its config.json says",
    "a gpt-study checkpoint, not a transformers folder": "transformers",  # its reading, named
    "a missing local folder": "no such folder",
    "a file": "is a file",
}


@pytest.mark.parametrize("reader", ["import", "evaluate --hf", "compare --hf"])
@pytest.mark.parametrize("how", list(DAMAGED))
def test_every_reader_of_a_transformers_folder_refuses_damage_in_one_line(
    tmp_path, texts, tiny_prepared, capsys, reader, how
):
    """import, evaluate --hf and compare --hf load a transformers folder one way: a damaged or
    foreign one (or a path that is none, which must not go to the Hub) is one line, exit 2."""
    from conftest import one_layer_run

    source = _damage(tmp_path / "hf", how, texts, tmp_path)
    argv = {
        "import": ["import", "--hf", source, "--out", str(tmp_path / "ckpt")],
        "evaluate --hf": ["evaluate", "--hf", source, "--data", str(tiny_prepared)],
        "compare --hf": [],
    }[reader]
    if reader == "compare --hf":
        run = str(one_layer_run(tiny_prepared, tmp_path / "run"))
        argv = ["compare", run, "--no_stories", "--out", str(tmp_path / "cmp"), "--hf", source]
    capsys.readouterr()  # save_pretrained's bars
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and DAMAGED[how] in err[0], err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "cmp").exists()
