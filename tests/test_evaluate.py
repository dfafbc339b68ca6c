"""Evaluation: NLL against a hand computation, story metrics on known sequences, the story
protocol (cap, seeds, interval), the CLI."""

import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch

from gpt_study.checkpoint import save_checkpoint
from gpt_study.cli import main
from gpt_study.config import SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.evaluate.report import evaluate_split, evaluate_tokens, split_metrics
from gpt_study.evaluate.stories import (
    OPENINGS,
    STORY_PROTOCOL,
    StoryProtocol,
    settings_line,
    share_text,
    story_metrics,
    wilson_interval,
)
from gpt_study.model.gpt import GPT, GPTConfig

WORDS = "once upon a time there was little girl named lily . she liked to play , and the".split()
VOCAB = ["<unk>", "<sot>", "<eot>"] + WORDS


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=len(VOCAB), max_len=16, d_model=16, d_ff=32, n_layers=2, n_heads=2)
    return GPT(cfg).eval()


def stream(n=61, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(VOCAB), size=n).astype(np.uint16)


@pytest.mark.parametrize("n,context,batch", [(61, 8, 3), (50, 8, 16), (9, 8, 1), (40, 16, 2)])
def test_nll_equals_a_hand_computation(n, context, batch):
    model = tiny_model()
    tokens = stream(n)
    sums = evaluate_tokens(model, tokens, context, batch_size=batch, by_context=True)
    # By hand: target j is predicted from the start of its window (every `context` tokens),
    # one position at a time, with the softmax written out in float64; its context is the j -
    # start tokens it sees, which sets its band (1-8 tokens, 9-16).
    nll = correct = unk = 0.0
    bands = {"1-8": [0.0, 0]} | ({"9-16": [0.0, 0]} if context == 16 else {})
    with torch.no_grad():
        for j in range(1, n):
            start = (j - 1) // context * context
            x = torch.tensor(tokens[start:j].astype(np.int64))[None]
            z = model(x)[0, -1].double()
            logp = z - torch.log(torch.exp(z - z.max()).sum()) - z.max()
            nll -= logp[int(tokens[j])].item()
            band = bands["1-8" if j - start <= 8 else "9-16"]
            band[0] -= logp[int(tokens[j])].item()
            band[1] += 1
            correct += int(z.argmax()) == int(tokens[j])
            unk += int(tokens[j]) == 0
    assert sums["targets"] == n - 1
    assert sums["nll"] == pytest.approx(nll, rel=1e-5)
    assert [b["context"] for b in sums["by_context"]] == list(bands)
    for got in sums["by_context"]:
        total, count = bands[got["context"]]
        assert got["targets"] == count and got["nll"] == pytest.approx(total / count, rel=1e-5)
    assert sums["correct"] == correct and sums["unk"] == unk
    m = split_metrics(sums, n_bytes=123.0)
    assert m["nll"] == pytest.approx(nll / (n - 1), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(nll / (n - 1)), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(nll / math.log(2) / 123.0, rel=1e-5)
    assert m["unk_rate"] == pytest.approx(unk / (n - 1))


def test_a_hit_is_the_target_at_the_top_ties_included():
    """The scorer's top-1 hit (``amax``, not ``argmax``): a target sharing the top logit counts."""
    from gpt_study.evaluate.heldout import Sums, _add

    logits = torch.tensor([[[0.0, 2.0, 2.0, 1.0], [3.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 5.0]]])
    s = Sums()
    _add(s, logits, torch.tensor([[2, 3, 3]]), 0.0, 1.0, None)  # (1, 3, 4), targets (1, 3)
    assert (s.targets, s.correct) == (3, 2)  # the tie at id 2 and the clear top at id 3


def test_story_metrics_on_known_sequences():
    loop = [5, 6, 7, 8] * 5  # 17 four-grams, 4 distinct: 13 repeats
    fresh = list(range(10, 20))  # ended (its <eot> is not a story token): 7 four-grams, fresh
    m = story_metrics([loop, fresh], [False, True])
    assert m["eot_share"] == 0.5
    assert m["mean_length"] == (20 + 10) / 2
    assert m["distinct_1"] == pytest.approx(14 / 30)
    assert m["distinct_2"] == pytest.approx((4 + 9) / (19 + 9))
    assert m["repeated_4gram"] == pytest.approx(13 / (17 + 7))
    assert story_metrics([fresh], [True])["repeated_4gram"] == 0.0


def test_the_story_protocol_caps_at_512_and_seeds_each_batch_from_its_offset():
    assert STORY_PROTOCOL == StoryProtocol()
    assert STORY_PROTOCOL.max_new_tokens == 512 and STORY_PROTOCOL.seed == 1234
    assert STORY_PROTOCOL.openings == OPENINGS and len(STORY_PROTOCOL.prompts()) == 32
    three = StoryProtocol(samples_per_opening=3)  # 48 prompts: a full batch and a part
    assert [(first, len(ps)) for first, ps in three.batches()] == [(0, 32), (32, 16)]
    seeds = [three.decoding().from_row(first).seed for first, _ in three.batches()]
    assert seeds == [1234, 1266]  # prompt i draws from seed + i
    assert [p for _, ps in three.batches() for p in ps] == three.prompts()
    assert STORY_PROTOCOL.departures() == []
    assert three.departures() == ["samples_per_opening 3 (protocol: 2)"]
    assert StoryProtocol(openings=OPENINGS[:4]).departures() == ["4 of the openings"]
    # the decoding is the protocol's too: every sampling setting but the cap and the seed
    assert STORY_PROTOCOL.departures(SampleConfig(max_new_tokens=9, seed=3)) == []
    assert STORY_PROTOCOL.decoding() == SampleConfig(max_new_tokens=512, seed=1234)
    changed = {
        "greedy": True,
        "temperature": 1.0,
        "top_k": 5,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
    }
    for name, value in changed.items():
        away = STORY_PROTOCOL.departures(SampleConfig(**{name: value}))
        assert away == [f"{name} {value} (protocol: {getattr(SampleConfig(), name)})"]
        line = settings_line(
            STORY_PROTOCOL.decoding(SampleConfig(**{name: value})), 16, STORY_PROTOCOL
        )
        assert line.endswith(f"not the story protocol: {away[0]}")
    assert settings_line(STORY_PROTOCOL.decoding(), 16, STORY_PROTOCOL).endswith(
        "; the story protocol"
    )
    assert {f.name for f in fields(SampleConfig)} == {*changed, "max_new_tokens", "seed"}


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3.
NEWCOMBE = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)]
NEWCOMBE += [(1, 29, 0.0061, 0.1718)]


@pytest.mark.parametrize("k,n,lo,hi", NEWCOMBE)
def test_wilson_interval_equals_the_published_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_eot_share_carries_its_standard_error_and_interval():
    m = story_metrics([[5, 6]] * 32, [True] * 31 + [False])
    assert m["eot_share"] == 31 / 32
    assert m["eot_share_se"] == pytest.approx(math.sqrt(31 / 32 * (1 / 32) / 32))
    assert m["eot_share_ci"] == pytest.approx(list(wilson_interval(31, 32)))
    assert m["eot_share_ci"] == pytest.approx([0.8426, 0.9945], abs=5e-5)
    assert share_text(m) == "97% ± 6 (95% CI 84-99%)"  # 32 stories: about six points
    old = {"stories": 32, "eot_share": 1.0}  # an evaluate JSON from before the interval
    assert share_text(old) == "100% ± 0 (95% CI 89-100%)"


def write_prepared(folder, tok, n=200, seed=0):
    """A prepared folder in the documented layout, from random ids (the model need not learn)."""
    folder.mkdir(parents=True)
    tok.save(folder / "tokenizer.json")
    meta = {"splits": {}}
    for split in ("train", "valid"):
        ids = stream(n, seed)
        ids.tofile(folder / f"{split}.bin")
        meta["splits"][split] = {"tokens": n, "bytes": 4 * n, "unk": int((ids == 0).sum())}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_evaluate_split_reads_a_prepared_folder(tmp_path):
    tok = WordTokenizer(VOCAB)
    data = write_prepared(tmp_path / "data", tok)
    model = tiny_model()
    full = evaluate_split(model, data, window=8, tokenizer=tok)
    sums = evaluate_tokens(model, np.fromfile(data / "valid.bin", dtype=np.uint16), 8)
    assert full["tokens"] == 199 and full["nll"] == pytest.approx(sums["nll"] / 199)
    assert full["bits_per_byte"] == pytest.approx(sums["nll"] / math.log(2) / 800)
    assert not full["bytes_estimated"]
    part = evaluate_split(model, data, window=8, max_rows=5, tokenizer=tok)
    assert part["tokens"] == 40 and part["bytes_estimated"]
    assert part["bytes"] == pytest.approx(800 * 40 / 199)


def _run_folder(tmp_path, context=8):
    tok = WordTokenizer(VOCAB)
    data = write_prepared(tmp_path / "data", tok)
    cfg = preset_config(
        "tiny",
        model={"vocab_size": len(VOCAB), "max_len": 16, "d_model": 16, "d_ff": 32, "n_layers": 1},
        train={"context_size": context, "data": str(data)},
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg.model), cfg, data / "tokenizer.json")
    return tmp_path, ckpt, data


@pytest.fixture
def run_folder(tmp_path):
    return _run_folder(tmp_path)


def test_cli_prints_a_table_and_writes_json(run_folder, capsys):
    tmp_path, ckpt, _ = run_folder
    out_json = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(ckpt), "--json", str(out_json), "--samples", "1"]
    assert main(args + ["--max_new_tokens", "12", "--seed", "5"]) == 0
    table = capsys.readouterr().out
    for label in ("perplexity", "bits per byte", "<unk> rate", "repeated 4-grams", "settings"):
        assert label in table
    assert "note: <unk> stands for every rare word" in table
    result = json.loads(out_json.read_text())
    assert result["valid"]["tokens"] == 199 and result["stories"]["stories"] == 16
    assert result["stories"]["settings"]["seed"] == 5
    assert result["stories"]["mean_length"] <= 12
    assert "97%" not in table and " ± " in table  # the share is printed with its interval
    assert result["stories"]["eot_share_ci"][0] <= result["stories"]["eot_share"]
    assert result["stories"]["settings_text"].endswith(
        "not the story protocol: samples_per_opening 1 (protocol: 2), "
        "max_new_tokens 12 (protocol: 512), seed 5 (protocol: 1234)"
    )


def test_cli_by_context_prints_and_saves_the_bands(tmp_path, capsys):
    """--by_context: the NLL of each band of context, in the table and the JSON; the bands'
    targets are the split's and their NLL averages to the split's."""
    _, ckpt, _ = _run_folder(tmp_path, context=12)
    out_json = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(ckpt), "--no_stories", "--by_context"]
    assert main([*args, "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    valid = json.loads(out_json.read_text())["valid"]
    bands = valid["by_context"]
    assert [b["context"] for b in bands] == ["1-8", "9-12"]
    assert sum(b["targets"] for b in bands) == valid["tokens"] == 199
    mean = sum(b["nll"] * b["targets"] for b in bands) / valid["tokens"]
    assert mean == pytest.approx(valid["nll"], rel=1e-6)
    line = next(x for x in table.splitlines() if x.startswith("NLL / token, context 9-12"))
    assert line.endswith(f"{bands[1]['nll']:.4f} ({bands[1]['targets']:,} targets)")


def test_cli_stories_follow_the_protocol_not_the_checkpoint(run_folder):
    """The checkpoint keeps the sampling default of 256 new tokens and no seed: without story
    flags evaluate writes the protocol's stories, exactly those of write_stories."""
    tmp_path, ckpt, _ = run_folder
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--no_valid", "--json", str(out_json)]) == 0
    stories = json.loads(out_json.read_text())["stories"]
    assert stories["settings"]["max_new_tokens"] == 512 and stories["settings"]["seed"] == 1234
    assert stories["stories"] == 32 and stories["settings_text"].endswith("; the story protocol")
    assert stories["protocol"]["openings"] == len(OPENINGS)


def test_cli_rejects_data_with_another_vocabulary(run_folder, capsys):
    tmp_path, ckpt, _ = run_folder
    other = write_prepared(tmp_path / "other", WordTokenizer(VOCAB[:-1] + ["zebra"]))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different vocabulary" in err[0], err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data", "nowhere"], "no prepared data folder at nowhere"),
        (["--json", "no/such/dir/x.json"], "its folder does not exist"),
        (["--no_valid", "--no_stories"], "nothing to do"),
        (["--no_valid", "--by_context"], "--by_context scores the held-out text"),
    ],
)
def test_cli_bad_input_is_one_line(run_folder, capsys, extra, message):
    _, ckpt, _ = run_folder
    assert main(["evaluate", "--checkpoint", str(ckpt), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_missing_checkpoint_is_one_line(capsys, tmp_path):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint at" in err[0]
