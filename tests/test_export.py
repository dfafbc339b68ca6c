"""Export: transformers loads the folder and computes what gpt-study computes.

An independent implementation is the best check of ours: for each layout variant, the logits
(max abs difference under 1e-4 in fp32), the token ids of several texts and the greedy tokens
of transformers' ``generate`` must equal gpt-study's.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from gpt_study.checkpoint import save_checkpoint
from gpt_study.cli import main
from gpt_study.config import EOT_ID, SOT_ID, GPTConfig, SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.data.clean import clean_text
from gpt_study.data.tokenizer import WordTokenizer, build_word_vocab, spacy_tokenizer, train_bpe
from gpt_study.generate import generate_ids
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

transformers = pytest.importorskip(
    "transformers", reason="transformers is in the test extra: pip install -e '.[test]'"
)
from gpt_study.export import export_hf  # noqa: E402  (needs transformers' neighbours only)
from gpt_study.export.hf import choose_layout, generation_config  # noqa: E402
from gpt_study.export.tokenizer import exact_share, hf_tokenizer  # noqa: E402
from gpt_study.export.verify import greedy_config  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
TEXTS = [
    "once upon a time, there was a little girl named lily.",
    "lily's mom said, \"don't go! it's cold.\" she couldn't wait...",
    "the ice-cream (a big one) was very good; tom liked it: yum!",
    "they're happy and we'll play. i'm sure you've seen it, haven't you?",
]
STORIES = [
    f"{t} {n} played with the {x} in the {p}." for t in TEXTS for n in ("sam", "mia") for x in
    ("ball", "kite") for p in ("park", "garden")
]  # fmt: skip


def _word():
    counts: dict[str, int] = {}
    for s in STORIES:
        for piece in spacy_tokenizer()(s):
            counts[piece.text] = counts.get(piece.text, 0) + 1
    vocab, freq = build_word_vocab(counts, vocab_size=1000, min_freq=1)
    return WordTokenizer(vocab, lowercase=True, counts=freq)


def _bpe():
    return train_bpe(STORIES * 4, vocab_size=300, lowercase=True, min_freq=1)


LLAMA = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "head_bias": False}


def _checkpoint(tmp_path: Path, tok, head_bias: bool, options: dict | None = None) -> Path:
    """A tiny checkpoint (32 positions, trained window 24) whose greedy choices are not ties."""
    cfg = preset_config(
        "tiny",
        model={"vocab_size": tok.vocab_size, "max_len": 32, "d_model": 32, "d_ff": 64,
               "n_layers": 2, "n_heads": 4, **(options or {})},
        train={"context_size": 24, "data": str(tmp_path / "no-data")},
        sample={"greedy": False, "temperature": 0.7, "top_k": 5},
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        model.head.weight.mul_(20)
        if head_bias:
            model.head.bias.normal_()
        if model.head.bias is not None:
            model.head.bias[EOT_ID] = -30.0  # long stories: <eot> not at once
        else:
            model.tok_emb.weight[EOT_ID] = 0.0  # the same, through the (maybe tied) head
        for name, p in model.named_parameters():
            if p.dim() == 1 and name != "head.bias":  # gains and biases off 1 and 0: a swap shows
                p.add_(0.1 * torch.randn_like(p))
            elif name.startswith("value_embeds."):  # as loud as the values: a class without shows
                p.mul_(20)
        if cfg.model.residual_scalars:  # away from 1 and 0: a class that mixed otherwise shows
            model.resid_scale.copy_(torch.tensor([0.7, 1.3])[: cfg.model.n_layers])
            model.x0_scale.copy_(torch.tensor([0.5, -0.8])[: cfg.model.n_layers])
    tok.save(tmp_path / "tok.json")
    return save_checkpoint(tmp_path / "ckpt", model, cfg, tmp_path / "tok.json", {"step": 3})


VARIANTS = {
    "word, head bias (our class)": (_word, True, None),
    "bpe, head bias (our class)": (_bpe, True, None),
    "word, zero head bias (stock GPT2LMHeadModel)": (_word, False, None),
    "bpe, no biases anywhere (nanoGPT's; GPT-2 with zeros)": (
        _bpe,
        False,
        {"bias": False, "norm_bias": False, "head_bias": False},
    ),
    "bpe, llama: rope, rmsnorm, swiglu, biases": (_bpe, False, LLAMA),
    "word, llama tied, no biases": (_word, False, {**LLAMA, "tie_embeddings": True, "bias": False}),
    "bpe, llama tied, value embeddings (our class)": (
        _bpe,
        False,
        {**LLAMA, "tie_embeddings": True, "bias": False, "value_embeds": True},
    ),
    "word, no head bias, soft-capped logits (our class, a zero head bias)": (
        _word,
        False,
        {"head_bias": False, "logit_softcap": 4.0},
    ),
    "bpe, llama tied, soft-capped logits, residual scalars (our class)": (
        _bpe,
        False,
        {
            **LLAMA,
            "tie_embeddings": True,
            "bias": False,
            "logit_softcap": 4.0,
            "residual_scalars": True,
        },
    ),
    "word, head bias, residual scalars (our class)": (_word, True, {"residual_scalars": True}),
    "bpe, gpt2 tied, no head bias, value embeddings (our class)": (
        _bpe,
        False,
        {"tie_embeddings": True, "head_bias": False, "value_embeds": True},
    ),
    "bpe, gpt2 relu2, zero head bias (stock GPT2LMHeadModel)": (_bpe, False, {"mlp": "relu2"}),
    # --no-norm_bias changes nothing an RMSNorm computes: no zeros written, none named
    "bpe, gpt2 rmsnorm, swiglu, head bias (our class)": (
        _bpe,
        True,
        {"norm": "rmsnorm", "mlp": "swiglu", "norm_bias": False},
    ),
    "word, llama: layernorm without its biases (our class, zeros there)": (
        _word,
        False,
        {**LLAMA, "norm": "layernorm", "norm_bias": False},
    ),
    "word, llama tied: rmsnorm, tanh gelu without a gate (our class)": (
        _word,
        False,
        {**LLAMA, "mlp": "gelu_tanh", "tie_embeddings": True, "bias": False},
    ),
    "bpe, gpt2 qk-norm, value embeddings (our class)": (
        _bpe,
        True,
        {"qk_norm": True, "value_embeds": True},
    ),
    "word, llama qk-norm with biases (our class; Qwen3 has none)": (
        _word,
        False,
        {**LLAMA, "qk_norm": True},
    ),
    "bpe, llama tied, head bias (our class)": (
        _bpe,
        True,
        {**LLAMA, "tie_embeddings": True, "bias": False, "head_bias": True},
    ),
    "bpe, gpt-neox: rope, layernorm, gelu, no head bias": (
        _bpe,
        False,
        {"positions": "rope", "head_bias": False},
    ),
    "word, gpt-neox tied, relu2, no biases (zeros)": (
        _word,
        False,
        {
            "positions": "rope",
            "mlp": "relu2",
            "tie_embeddings": True,
            "bias": False,
            "norm_bias": False,
            "head_bias": False,
        },
    ),
    "bpe, qwen3: llama with each head's queries and keys normalised, no biases": (
        _bpe,
        False,
        {**LLAMA, "bias": False, "qk_norm": True},
    ),
}
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
CLASSES["gpt_neox"] = "GPTNeoXForCausalLM"
OUR_CLASSES = {"gpt2": "GPTStudyForCausalLM", "llama": "GPTStudyLlamaForCausalLM"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    make_tok, head_bias, options = VARIANTS[request.param]
    tmp = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(tmp, make_tok(), head_bias, options)
    lines: list[str] = []
    result = export_hf(ckpt, tmp / "hf", log=lines.append)
    return ckpt, result, lines


def _load(result):
    trust = result.remote_code
    model = transformers.AutoModelForCausalLM.from_pretrained(
        result.out, trust_remote_code=trust, dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(result.out, trust_remote_code=trust)
    return model, tok


def test_transformers_computes_our_logits_ids_and_greedy_tokens(exported):
    from gpt_study.checkpoint import load_checkpoint

    ckpt_path, result, _ = exported
    ours = load_checkpoint(ckpt_path)
    hf, hf_tok = _load(result)
    want_class = (OUR_CLASSES if result.remote_code else CLASSES)[result.layout]
    assert type(hf).__name__ == want_class
    c = ours.model.config
    assert result.layout == (
        "gpt2"
        if c.positions == "learned"
        else "qwen3"
        if c.qk_norm and not result.remote_code
        else "gpt_neox"
        if c.norm == "layernorm" and c.mlp != "swiglu" and not result.remote_code
        else "llama"
    )

    idx = torch.randint(0, ours.model.config.vocab_size, (3, 32), generator=torch.Generator())
    with torch.no_grad():
        diff = (hf(idx).logits - ours.model.eval()(idx)).abs().max().item()
    assert diff < 1e-4

    for text in TEXTS:
        assert hf_tok(text).input_ids == ours.tokenizer.encode(text, sot=True), text
        assert hf_tok(text, add_special_tokens=False).input_ids == ours.tokenizer.encode(text)

    prompt = ours.tokenizer.encode("once upon a time", sot=True)
    n = 24 - len(prompt)  # inside the trained window, where gpt-study does not slide
    greedy = SampleConfig(greedy=True, max_new_tokens=n)
    want = generate_ids(ours.model, [prompt], greedy, window=24, eot_id=EOT_ID).new_ids[0]
    ids = torch.tensor([prompt])
    got = hf.generate(
        ids, attention_mask=torch.ones_like(ids), generation_config=greedy_config(transformers, n)
    )[0, len(prompt) :].tolist()
    assert len(want) == n and got == want


def test_folder_holds_what_the_readme_says(exported):
    from gpt_study.checkpoint import load_checkpoint

    ckpt_path, result, lines = exported
    cfg = load_checkpoint(ckpt_path).config.model
    files = {p.name for p in result.out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md", "gpt_study_export.json"} <= files  # fmt: skip
    assert ("modeling_gpt_study.py" in files) == result.remote_code
    readme = (result.out / "README.md").read_text()
    config = json.loads((result.out / "config.json").read_text())
    # our classes' key, only where it computes something (a stock class's config stays stock)
    assert ("final_logit_softcapping" in config) == (cfg.logit_softcap > 0)
    zeros = "written as zeros, which compute the same" in readme
    # GPT-2 and GPT-NeoX always have biases on their linears and LayerNorms, our classes on their
    # LayerNorms (an RMSNorm has none, whatever --norm_bias says), our GPT-2 class on its head
    always = {"bias", "norm_bias"} if result.layout in ("gpt2", "gpt_neox") else set()
    always |= {"norm_bias"} if result.remote_code else set()
    always |= {"head_bias"} if result.remote_code and result.layout == "gpt2" else set()
    without = {n for n in always if not getattr(cfg, n)}
    if cfg.norm == "rmsnorm":
        without.discard("norm_bias")
    assert zeros == bool(without)
    for name in ("bias", "norm_bias", "head_bias"):  # the sentence names each one it lacked
        doc = type(cfg).__dataclass_fields__[name].metadata["doc"].split(" (")[0]
        assert (doc in readme) == (name in without), name
    if result.layout == "gpt2":
        acts = {"gelu": "gelu", "relu2": "relu2", "swiglu": "silu"}
        assert config["activation_function"] == acts[cfg.mlp]
        assert config.get("gated_mlp", False) == (cfg.mlp == "swiglu")
        assert config.get("norm_type", "layer_norm") == {"layernorm": "layer_norm"}.get(
            cfg.norm, "rms_norm"
        )
        assert config["tie_word_embeddings"] is cfg.tie_embeddings
        weights = safetensors.torch.load_file(result.out / "model.safetensors")
        biases = [v for k, v in weights.items() if k.endswith(".bias")]
        norms = 2 * cfg.n_layers + 1 if cfg.norm == "layernorm" else 0  # an RMSNorm has none
        assert len(biases) == 4 * cfg.n_layers + norms + (cfg.head_bias or result.remote_code)
        assert all(not b.any() for b in biases) == (not cfg.bias and not cfg.norm_bias)
        assert cfg.head_bias or not weights.get("lm_head.bias", torch.zeros(1)).any()
    elif result.layout == "gpt_neox":
        assert config["hidden_act"] == {"gelu": "gelu", "relu2": "relu2"}[cfg.mlp]
        assert config["use_parallel_residual"] is False and config["attention_bias"] is True
        assert config["rope_parameters"]["partial_rotary_factor"] == 1.0
        weights = safetensors.torch.load_file(result.out / "model.safetensors")
        biases = [v for k, v in weights.items() if k.endswith(".bias")]
        assert len(biases) == 6 * cfg.n_layers + 1  # GPT-NeoX always has them
        assert all(not b.any() for b in biases) == (not cfg.bias and not cfg.norm_bias)
        assert ("embed_out.weight" in weights) != cfg.tie_embeddings
    else:
        acts = {"swiglu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}
        assert config["hidden_act"] == acts[cfg.mlp] and config["rms_norm_eps"] == 1e-5
        assert config.get("gated_mlp", True) == (cfg.mlp == "swiglu")
        tied = config["tie_word_embeddings"]
        assert (
            "lm_head.weight" in safetensors.torch.load_file(result.out / "model.safetensors")
        ) != tied
    if result.remote_code:
        assert "auto_map" in config and "trust_remote_code=True" in readme
        assert f"`{OUR_CLASSES[result.layout]}` in `modeling_gpt_study.py`" in readme
        assert sum("trust_remote_code=True" in line for line in lines) == 1
    else:
        assert "auto_map" not in config and config["model_type"] == result.layout
    # no data folder beside this checkpoint: the word pipeline's share says it was not measured
    assert result.exact_share is None and "not measured" in readme
    gen = json.loads((result.out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == EOT_ID and gen["bos_token_id"] == SOT_ID
    assert gen["do_sample"] is True and gen["temperature"] == 0.7 and gen["top_k"] == 5
    record = json.loads((result.out / "gpt_study_export.json").read_text())
    assert record["logits_max_abs_diff"] < 1e-4 and record["greedy_tokens_equal"] is True


def test_generation_config_of_greedy_settings():
    gen = generation_config(SampleConfig(greedy=True, max_new_tokens=9))
    assert gen == {"bos_token_id": SOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID,
                   "max_new_tokens": 9, "do_sample": False, "temperature": 1.0, "top_k": 50,
                   "top_p": 1.0, "repetition_penalty": 1.0}  # fmt: skip


def test_every_sampling_setting_reaches_transformers_and_greedy_turns_them_off():
    """One translation for the export's file, its check and evaluate --hf: every field of
    SampleConfig but the cap and the seed (given apart) and greedy (do_sample) is carried."""
    from dataclasses import fields

    sample = SampleConfig(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.2)
    carried = {f.name for f in fields(SampleConfig)} - {"max_new_tokens", "seed", "greedy"}
    got = sample.for_transformers()
    assert set(got) == carried | {"do_sample"} and got["do_sample"] is True
    assert all(got[name] == getattr(sample, name) for name in carried)
    assert generation_config(sample).items() >= got.items()
    transformers.GenerationConfig(**got).validate()
    greedy = SampleConfig(greedy=True, temperature=0.7).for_transformers()
    assert set(greedy) == set(got) and greedy["do_sample"] is False  # every setting spelled out
    # transformers' neutral values, which greedy leaves unused: it takes them without a warning
    transformers.GenerationConfig(**greedy).validate(strict=True)
    assert greedy["repetition_penalty"] == 1.0


def test_each_model_finds_its_layout_or_one_line_why_none_fits():
    assert choose_layout(GPTConfig()).name == "gpt2"
    assert choose_layout(GPTConfig(**LLAMA)).name == "llama"
    assert choose_layout(GPTConfig(**LLAMA, tie_embeddings=True, rope_base=500.0)).name == "llama"
    # a stock class where one computes the model, before a layout whose class of ours would too
    assert choose_layout(GPTConfig(positions="rope", head_bias=False)).name == "gpt_neox"
    assert choose_layout(GPTConfig(**LLAMA, qk_norm=True, bias=False)).name == "qwen3"
    # our classes: the other norm, a gated or plain feed-forward, a head bias, qk-norm
    assert choose_layout(GPTConfig(positions="rope")).name == "llama"
    assert choose_layout(GPTConfig(**{**LLAMA, "head_bias": True})).name == "llama"
    assert choose_layout(GPTConfig(**{**LLAMA, "norm": "layernorm"})).name == "llama"
    assert choose_layout(GPTConfig(norm="rmsnorm", mlp="swiglu", qk_norm=True)).name == "gpt2"
    assert choose_layout(GPTConfig(**LLAMA, qk_norm=True)).name == "llama"  # biases: not Qwen3
    assert choose_layout(GPTConfig(**LLAMA, residual_scalars=True)).name == "llama"
    assert choose_layout(GPTConfig(**LLAMA, logit_softcap=30.0)).name == "llama"
    assert choose_layout(GPTConfig(logit_softcap=30.0)).name == "gpt2"
    assert choose_layout(GPTConfig(value_embeds=True)).name == "gpt2"
    assert choose_layout(GPTConfig(**LLAMA, value_embeds=True)).name == "llama"

    @dataclasses.dataclass
    class Later(GPTConfig):  # an option added to GPTConfig that no layout has learned yet
        soft_cap: float = 0.0

    with pytest.raises(UserError, match="does not know soft_cap"):
        choose_layout(Later(soft_cap=30.0))


def test_every_combination_of_model_options_finds_a_layout():
    """Every choice of every model option, in every combination, exports: by a stock class or
    by ours (a new option or choice joins the product, or this test fails on its field)."""
    values = {"logit_softcap": (0.0, 3.0), "rope_base": (10000.0,)}
    axes: dict[str, tuple] = {}
    for f in dataclasses.fields(GPTConfig):
        if f.metadata.get("choices"):
            axes[f.name] = tuple(f.metadata["choices"])
        elif f.type in (bool, "bool"):
            axes[f.name] = (False, True)
        elif f.name in values:
            axes[f.name] = values[f.name]
    assert {"positions", "norm", "mlp", "qk_norm", "value_embeds", "logit_softcap"} <= set(axes)
    for combo in itertools.product(*axes.values()):
        choose_layout(GPTConfig(**dict(zip(axes, combo, strict=True))))  # raises where none fits


def test_word_pipeline_tokenizes_held_out_stories_as_spacy_does():
    """On the shared sample's valid stories (vocabulary from the first half, measured on the
    second), the nearest tokenizers pipeline gives spaCy's ids for nearly every story."""
    path = SAMPLE / "valid.txt"
    if not path.exists():
        pytest.skip("shared TinyStories sample not present")
    stories = [clean_text(s, True) for s in path.read_text(encoding="utf-8").split("<|endoftext|>")]
    stories = [s for s in stories if s][:400]
    counts: dict[str, int] = {}
    for doc in spacy_tokenizer().pipe(stories[:200]):
        for t in doc:
            counts[t.text] = counts.get(t.text, 0) + 1
    vocab, _ = build_word_vocab(counts, vocab_size=30000, min_freq=1)
    tok = WordTokenizer(vocab, lowercase=True)
    assert exact_share(tok, hf_tokenizer(tok), stories[200:]) >= 0.99


def test_cli_exports_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, _word(), head_bias=True)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()
    assert "trust_remote_code=True" in capsys.readouterr().err
    # A second export replaces the folder it wrote.
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    cases = [
        (
            ["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
            "no checkpoint",
        ),
        (["--checkpoint", str(ckpt), "--out", str(out)], "did not write (notes.txt)"),
        (["--checkpoint", str(ckpt), "--out", str(ckpt)], "holds the input"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (out / "notes.txt").read_text() == "mine"


def test_every_tokenizer_kind_exports_or_is_refused_in_one_line(tmp_path, capsys):
    """word and bpe export (VARIANTS), hf too (tests/test_import.py); byte has no transformers
    tokenizer yet: refused before anything is written."""
    from gpt_study.data.tokenizer import KINDS, ByteTokenizer

    assert set(KINDS) == {"word", "bpe", "hf", "byte"}  # a new kind joins this test
    ckpt = _checkpoint(tmp_path, ByteTokenizer(), head_bias=False)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no export for a 'byte' tokenizer yet" in err[-1] and not out.exists(), err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_without_transformers_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    ckpt = _checkpoint(tmp_path, _word(), head_bias=True)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[export]"' in err[0]
    assert not (tmp_path / "hf").exists()


def test_exactness_is_measured_on_the_checkpoints_valid_split(tmp_path, tiny_prepared):
    """With the prepared folder's valid stories on disk, the share is measured on them."""
    from gpt_study.export.verify import held_out_texts

    corpus = tmp_path / "valid.txt"
    rng = random.Random(0)
    corpus.write_text("\n<|endoftext|>\n".join(rng.sample(STORIES, 8)), encoding="utf-8")
    meta = json.loads((tiny_prepared / "meta.json").read_text())
    meta["sources"] = [{"split": "valid", "path": str(corpus), "format": "txt"}]
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps(meta))
    cfg = preset_config("tiny", model={"vocab_size": 100}, train={"data": str(folder)})
    texts, where = held_out_texts(cfg, lowercase=True)
    assert len(texts) == 8 and "8 valid stories" in where
    cfg = preset_config("tiny", model={"vocab_size": 100}, train={"data": str(tmp_path / "gone")})
    assert held_out_texts(cfg, lowercase=True)[0] == []
