"""Generation: cached equals uncached, the window slides, sampling obeys its filters and seed."""

import pytest
import torch

from gpt_study.cli import main
from gpt_study.config import EOT_ID, SOT_ID, SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.data.tokenizer import WordTokenizer
from gpt_study.generate import (
    apply_repetition_penalty,
    candidates,
    draw_nucleus,
    generate,
    generate_ids,
    next_token,
    reference_generate,
    segment_start,
)
from gpt_study.generate.sampling import _draw
from gpt_study.generate.window import resolve_window
from gpt_study.model.gpt import GPT, GPTConfig
from gpt_study.runtime.errors import UserError
from oracles import filter_top_k, filter_top_p

V = 60
WORDS = "once upon a time there was little girl named lily . she liked to play , and the".split()
VOCAB = ["<unk>", "<sot>", "<eot>"] + WORDS + [f"w{i}" for i in range(V - 3 - len(WORDS))]
GREEDY = SampleConfig(greedy=True, max_new_tokens=40)


def tiny_model(seed=0, max_len=32, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, max_len=max_len, d_model=32, d_ff=64, n_layers=2, n_heads=4, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so greedy choices are not near-ties
        model.head.weight.mul_(20)
        model.head.bias[EOT_ID] = -1e4  # never end, unless a test wants it
    return model


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer(VOCAB, lowercase=True)


def test_cached_equals_uncached_tokens_and_logits():
    model = tiny_model()
    prompt = [SOT_ID, 5, 9, 17, 4]
    got = generate_ids(model, [prompt], GREEDY, window=32, return_logits=True)
    want, want_logits = reference_generate(model, prompt, 27)  # fills the 32 positions exactly
    assert got.new_ids[0][:27] == want
    torch.testing.assert_close(
        torch.stack(got.logits[0][:27]), torch.stack(want_logits), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("window,keep", [(16, 12), (16, 8), (16, 16), (8, 1), (32, 24)])
def test_window_slides_like_the_uncached_oracle(window, keep):
    # 40 new tokens after a 5-token prompt run far past the window (and past max_len 32).
    model = tiny_model(1)
    prompt = [SOT_ID, 5, 9, 17, 4]
    got = generate_ids(model, [prompt], GREEDY, window=window, keep=keep, return_logits=True)
    want, want_logits = reference_generate(model, prompt, 40, window=window, keep=keep)
    assert len(got.new_ids[0]) == 40
    assert got.new_ids[0] == want
    torch.testing.assert_close(
        torch.stack(got.logits[0]), torch.stack(want_logits), rtol=1e-4, atol=1e-4
    )


def test_keep_equal_to_window_is_a_plain_sliding_window():
    model = tiny_model(2)
    got = generate_ids(model, [[SOT_ID, 7]], GREEDY, window=10, keep=10, return_logits=True)
    seq = [SOT_ID, 7]
    for step in range(40):  # oracle: always the last 10 tokens, at positions 0..9
        logits = model(torch.tensor([seq[-10:]]))[0, -1]
        torch.testing.assert_close(got.logits[0][step], logits, rtol=1e-4, atol=1e-4)
        seq.append(int(logits.argmax()))
    assert got.new_ids[0] == seq[2:]


def test_segment_schedule():
    assert [segment_start(n, 4, 3) for n in range(1, 10)] == [0, 0, 0, 0, 2, 2, 4, 4, 6]


def test_long_prompt_keeps_its_most_recent_tokens():
    model = tiny_model(3)
    prompt = [SOT_ID] + [3 + i % 50 for i in range(40)]  # 41 tokens, window 16
    got = generate_ids(model, [prompt], GREEDY, window=16)
    assert got.new_ids == generate_ids(model, [prompt[-16:]], GREEDY, window=16).new_ids


def test_batch_of_uneven_prompts_equals_one_at_a_time():
    model = tiny_model(4)
    prompts = [[SOT_ID], [SOT_ID, 5, 6, 7, 8, 9, 10, 11, 12], [SOT_ID, 20, 21, 22]]
    penalised_argmax = SampleConfig(top_k=1, max_new_tokens=30, repetition_penalty=1.3)
    for sample in (GREEDY, penalised_argmax):
        batch = generate_ids(model, prompts, sample, window=12).new_ids
        alone = [generate_ids(model, [p], sample, window=12).new_ids[0] for p in prompts]
        assert batch == alone


def test_stops_at_eot_and_at_max_new_tokens():
    model = tiny_model(5)
    prompts = [[SOT_ID, 5], [SOT_ID, 9, 10]]
    with torch.no_grad():
        model.head.bias[EOT_ID] = 1e4  # <eot> always wins: stop after one token
    res = generate_ids(model, prompts, GREEDY, window=32)
    assert res.new_ids == [[EOT_ID], [EOT_ID]] and res.finished == [True, True]
    with torch.no_grad():
        model.head.bias[EOT_ID] = -1e4  # never: stop at max_new_tokens
    res = generate_ids(model, prompts, SampleConfig(max_new_tokens=7, seed=0), window=8)
    assert [len(r) for r in res.new_ids] == [7, 7] and res.finished == [False, False]


def test_rows_stop_independently():
    # Row 0's prompt makes <eot> certain at once; row 1 goes on to max_new_tokens, and a slide
    # after row 0 finished drops it from the cache without changing row 1.
    model = tiny_model(6)
    with torch.no_grad():
        model.head.weight[EOT_ID] = 0
        model.head.bias[EOT_ID] = 0
    logits = model(torch.tensor([[SOT_ID, 5]]))[0, -1]
    top = int(logits.argmax())
    with torch.no_grad():
        model.head.bias[EOT_ID] = logits[top] + 1  # <eot> wins after [sot, 5] ...
    res = generate_ids(model, [[SOT_ID, 5], [SOT_ID, 9, 10]], GREEDY, window=8)
    alone = generate_ids(model, [[SOT_ID, 9, 10]], GREEDY, window=8)
    assert res.new_ids[0] == [EOT_ID] and res.finished[0]
    assert res.new_ids[1] == alone.new_ids[0]


def test_seeded_sampling_is_reproducible():
    model = tiny_model(7)
    sample = SampleConfig(temperature=1.5, top_p=1.0, seed=42, max_new_tokens=30)
    a = generate_ids(model, [[SOT_ID], [SOT_ID, 5]], sample, window=16).new_ids
    b = generate_ids(model, [[SOT_ID], [SOT_ID, 5]], sample, window=16).new_ids
    sample.seed = 43
    c = generate_ids(model, [[SOT_ID], [SOT_ID, 5]], sample, window=16).new_ids
    assert a == b and a != c


def test_top_k_never_picks_outside_the_k_likeliest():
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    allowed = torch.topk(logits, 5, dim=-1).indices
    sample = SampleConfig(top_k=5, top_p=1.0, temperature=3.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        picked = next_token(logits, sample, generator=g)
        assert (allowed == picked[:, None]).any(dim=1).all()
    assert (filter_top_k(logits, 5) > float("-inf")).sum(dim=1).tolist() == [5, 5, 5, 5]


# Powers of two: softmax, the cumulative sums and the nucleus boundaries are all exact in float32,
# so a set that reaches p exactly must stop there (a ">" for ">=" keeps one token more).
# Only the last two tie, and no tested boundary falls between them.
EXACT = torch.tensor([2.0**-k for k in range(1, 8)] + [2.0**-7])  # 0.5, 0.25, ..., sums to 1


@pytest.mark.parametrize("p,n_kept", [(0.5, 1), (0.75, 2), (0.875, 3), (0.9375, 4), (0.8, 3)])
def test_top_p_keeps_the_smallest_set_reaching_p_exactly(p, n_kept):
    logits = torch.log(torch.stack([EXACT, EXACT.flip(0)]))  # (2, 8), likeliest first and last
    # The premise: both paths see these probabilities exactly.
    assert torch.equal(torch.softmax(logits, -1)[0], EXACT)
    assert torch.equal(torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True))[0], EXACT)
    kept = filter_top_p(logits, p) > float("-inf")
    want = torch.zeros(2, 8, dtype=torch.bool)
    want[0, :n_kept] = True
    want[1] = want[0].flip(0)
    assert torch.equal(kept, want)
    weights, ids = candidates(logits, 0, p)
    assert torch.equal(torch.zeros_like(want).scatter(-1, ids, weights > 0), want)
    g = torch.Generator().manual_seed(0)
    sample = SampleConfig(top_p=p, temperature=1.0)
    picked = torch.stack([next_token(logits, sample, generator=g) for _ in range(300)])  # (300, 2)
    assert kept[torch.arange(2), picked].all()
    assert len(picked[:, 0].unique()) == n_kept  # and every kept token does get drawn


def test_top_p_below_the_likeliest_keeps_only_it():
    logits = torch.log(torch.stack([EXACT, EXACT.flip(0)]))
    assert (filter_top_p(logits, 0.01) > float("-inf")).sum(dim=1).tolist() == [1, 1]


@pytest.mark.parametrize("where", [0, 1, 2])  # the tie's place in the row: the sort's order
@pytest.mark.parametrize("top_k", [0, 3])  # draw_nucleus, then candidates after top-k
def test_a_tie_at_the_nucleus_edge_is_kept_whole_on_every_path(where, top_k):
    """0.5, 0.25, 0.25 at p 0.6: the second tied token has 0.75 above it in sorted order but only
    0.5 strictly likelier; every path keeps both (so which one survives never depends on how a
    sort orders a tie)."""
    probs = torch.tensor([0.25, 0.25, 0.25])
    probs[where] = 0.5
    logits = torch.log(probs)[None].repeat(2, 1)  # (2, 3)
    padded = torch.cat([logits, torch.full((2, 5), -30.0)], dim=-1)  # never drawn
    assert (filter_top_p(padded, 0.6) > float("-inf"))[:, :3].all()
    weights, ids = candidates(padded, top_k, 0.6)
    assert sorted(ids[0, weights[0] > 0].tolist()) == [0, 1, 2]
    g = torch.Generator().manual_seed(0)
    sample = SampleConfig(top_p=0.6, top_k=top_k, temperature=1.0)
    picked = torch.stack([next_token(padded, sample, generator=g) for _ in range(600)])  # (600, 2)
    counts = torch.bincount(picked.flatten(), minlength=8)[:3] / picked.numel()
    torch.testing.assert_close(counts, probs, atol=0.05, rtol=0)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (0, 0.999), (7, 1.0), (7, 0.5), (0, 0.3)])
@pytest.mark.parametrize("scale", [0.5, 8.0])  # flat (nucleus wider than 256) and peaked
def test_candidates_are_exactly_the_filtered_sets(top_k, top_p, scale):
    torch.manual_seed(1)
    logits = torch.randn(3, 3000) * scale
    want = filter_top_p(filter_top_k(logits, top_k), top_p) > float("-inf")
    weights, ids = candidates(logits, top_k, top_p)
    got = torch.zeros_like(want).scatter(-1, ids, weights > 0)
    assert torch.equal(got, want)


def test_candidates_with_wide_and_narrow_rows_in_one_batch():
    torch.manual_seed(2)
    logits = torch.randn(4, 3000) * torch.tensor([[0.3], [9.0], [0.3], [9.0]])
    want = filter_top_p(logits, 0.9) > float("-inf")
    weights, ids = candidates(logits, 0, 0.9)
    got = torch.zeros_like(want).scatter(-1, ids, weights > 0)
    assert torch.equal(got, want)
    assert want[0].sum() > 128 and want[1].sum() < 128  # both paths were taken


def test_draw_follows_the_weights():
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    counts = torch.bincount(_draw(weights, g).flatten(), minlength=4) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015, rtol=0)


@pytest.mark.parametrize("rows", [1, 2000])  # one row: host scalars; many: the vector test
def test_nucleus_draws_follow_the_renormalised_nucleus(rows):
    """draw_nucleus (rejection, no sort) draws each token of filter_top_p's set in proportion to
    its probability, and nothing outside it; one row and many rows alike."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])
    kept = filter_top_p(logits, 0.8)
    want = torch.softmax(kept, dim=-1)[0]  # zero outside the nucleus
    g = torch.Generator().manual_seed(0)
    n = 16000
    draws = torch.cat([draw_nucleus(logits.repeat(rows, 1), 0.8, g) for _ in range(n // rows)])
    counts = torch.bincount(draws, minlength=8) / len(draws)
    assert (counts[want == 0] == 0).all()
    torch.testing.assert_close(counts, want, atol=0.02, rtol=0)


def test_greedy_is_the_studys_plain_argmax():
    model = tiny_model(10)
    plain = generate_ids(model, [[SOT_ID, 5]], GREEDY, window=16).new_ids
    penalised = SampleConfig(greedy=True, max_new_tokens=40, repetition_penalty=1.5)
    assert generate_ids(model, [[SOT_ID, 5]], penalised, window=16).new_ids == plain
    argmax_with_penalty = SampleConfig(top_k=1, max_new_tokens=40, repetition_penalty=1.5)
    assert generate_ids(model, [[SOT_ID, 5]], argmax_with_penalty, window=16).new_ids != plain


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]


def test_text_api_oov_empty_and_streaming(tok):
    model = tiny_model(8)
    notes, pieces = [], {0: [], 1: [], 2: []}
    res = generate(
        model,
        tok,
        ["Once upon a time, a zebra", "", "Lily liked the giraffe"],
        SampleConfig(seed=3, max_new_tokens=12),
        window=16,
        stream=lambda row, text: pieces[row].append(text),
        warn=notes.append,
    )
    assert res.prompt_ids[0] == [SOT_ID] + [
        VOCAB.index(w) for w in "once upon a time , a".split()
    ] + [0]
    assert res.prompt_ids[1] == [SOT_ID]  # an empty prompt starts from <sot>
    assert len(notes) == 2 and "zebra" in notes[0] and "giraffe" in notes[1]
    assert notes[0].startswith("prompt 1:") and notes[1].startswith("prompt 3:")
    for row in range(3):
        assert "".join(pieces[row]) == res.texts[row]  # the stream shows the final text
        assert len(res.new_ids[row]) == 12
    assert res.texts[0].startswith("once upon a time, a <unk>")


def test_vocab_mismatch_is_one_clear_error(tok):
    model = tiny_model(9)
    small = WordTokenizer(VOCAB[:40])
    with pytest.raises(UserError, match="tokenizer has 40 tokens but the model expects 60"):
        generate(model, small, "once", window=16)


def test_bad_window_is_rejected():
    with pytest.raises(UserError, match="--window 64 is longer than the 32 positions"):
        generate_ids(tiny_model(), [[SOT_ID]], GREEDY, window=64)
    with pytest.raises(UserError, match="--window 0 is out of range"):
        generate_ids(tiny_model(), [[SOT_ID]], GREEDY, window=0)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_the_trained_window_is_the_default_and_the_limit(positions):
    """One rule for every reader of a model: the trained window by default; longer is refused
    for learned positions (nothing trained there) and allowed with a note for rotary ones."""
    cfg = GPTConfig(vocab_size=60, max_len=32, d_model=32, d_ff=64, n_layers=2, n_heads=4,
                    positions=positions)  # fmt: skip
    model = GPT(cfg).eval()
    assert resolve_window(model, None) == (32, None)  # never trained: its positions
    model.trained_window = 12
    assert resolve_window(model, None) == (12, None) and resolve_window(model, 8) == (8, None)
    if positions == "learned":
        with pytest.raises(
            UserError, match="longer than the 12 positions this model was trained on"
        ):
            resolve_window(model, 20)
        return
    w, note = resolve_window(model, 20)
    assert w == 20 and "longer than the 12 positions" in note
    notes: list[str] = []
    tok = WordTokenizer(VOCAB)
    generate(model, tok, "once", SampleConfig(greedy=True, max_new_tokens=3), 20, warn=notes.append)
    assert any("rotary positions go on" in n for n in notes)


def _write_checkpoint(tmp_path, tok):
    from gpt_study.checkpoint import save_checkpoint

    cfg = preset_config(
        "tiny",
        model={"vocab_size": V, "max_len": 32, "d_model": 32, "d_ff": 64, "n_layers": 2},
        train={"context_size": 16},
    )
    tok.save(tmp_path / "tok.json")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", GPT(cfg.model), cfg, tmp_path / "tok.json")


def test_cli_generates_batches_and_raw_tokens(tmp_path, tok, capsys):
    ckpt = _write_checkpoint(tmp_path, tok)
    (tmp_path / "prompts.txt").write_text("once upon a time\n\nlily liked\n")
    args = ["generate", "--checkpoint", str(ckpt), "--max_new_tokens", "5", "--seed", "1"]
    assert main(args + ["--prompt_file", str(tmp_path / "prompts.txt"), "--batch_size", "1"]) == 0
    out = capsys.readouterr().out
    assert "### story 1" in out and "### story 2" in out and "once upon a time" in out
    assert main(args + ["--prompt", "the girl", "--raw", "--greedy"]) == 0
    raw = capsys.readouterr().out.split()
    assert raw[:3] == ["<sot>", "the", "girl"] and len(raw) <= 8
    assert main(args + ["--prompt", "the girl"]) == 0  # streamed
    assert capsys.readouterr().out.startswith("the girl")


def test_cli_stories_do_not_depend_on_the_batch_size(tmp_path, tok, capsys):
    """Prompt i draws from seed + i: --batch_size changes nothing, and the same prompt given
    again is another story (batches used to restart at the seed: prompts 1 and 17 were equal)."""
    ckpt = _write_checkpoint(tmp_path, tok)
    prompts = [x for _ in range(5) for x in ("--prompt", "lily liked")]
    args = ["generate", "--checkpoint", str(ckpt), "--max_new_tokens", "12", "--seed", "7"]
    outs = []
    for size in ("1", "2", "16"):
        assert main([*args, *prompts, "--batch_size", size, "--no-stream"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2]
    stories = [s.strip() for s in outs[0].split("### story")[1:]]
    assert len({s.split("\n", 1)[1] for s in stories}) > 1  # not one story five times


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--checkpoint", "nowhere"], "no checkpoint at nowhere"),
        (["--temperature", "0"], "--temperature 0.0 is out of range: use a value > 0"),
        (["--prompt_file", "missing.txt"], "cannot read --prompt_file"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, tok, capsys, extra, message):
    ckpt = _write_checkpoint(tmp_path, tok)
    assert main(["generate", "--checkpoint", str(ckpt), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_tokenizer_that_does_not_match_the_checkpoint(tmp_path, tok, capsys):
    ckpt = _write_checkpoint(tmp_path, tok)
    WordTokenizer(VOCAB[:40]).save(ckpt / "tokenizer.json")
    assert main(["generate", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the tokenizer this model was saved with" in err[0]
