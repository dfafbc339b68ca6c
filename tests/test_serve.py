"""The serve API through FastAPI's test client: every view, every bad request, the page itself."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from gpt_study.cli import main  # noqa: E402
from gpt_study.config import SampleConfig  # noqa: E402
from gpt_study.data.tokenizer import KINDS  # noqa: E402
from gpt_study.evaluate.introspect import score_ids  # noqa: E402
from gpt_study.generate import encode_prompt, generate_ids  # noqa: E402
from gpt_study.runtime.errors import UserError  # noqa: E402
from gpt_study.serve.app import STATIC, create_app  # noqa: E402
from gpt_study.serve.limits import Busy, Gate, Limits  # noqa: E402
from gpt_study.serve.registry import Models, Runs  # noqa: E402
from serve_fixtures import VOCAB, write_checkpoint, write_runs  # noqa: E402

TEXT = "Once upon a time there was a little girl named Lily. She liked to play in the park."


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    other = VOCAB[:3] + list(reversed(VOCAB[3:]))  # the same words, other ids
    return {
        "a": write_checkpoint(root / "a", seed=0),
        "b": write_checkpoint(root / "b", seed=1),
        "other": write_checkpoint(root / "other", seed=2, vocab=other),
        "runs": write_runs(root / "runs"),
    }


@pytest.fixture(scope="module")
def models(assets):
    return Models.load([str(assets[k]) for k in ("a", "b", "other")], device="cpu")


@pytest.fixture(scope="module")
def client(models, assets):
    limits = Limits(max_prompt_chars=200, max_new_tokens=40, max_text_chars=500, max_ids=64)
    with TestClient(create_app(models, Runs(assets["runs"]), limits)) as c:
        yield c


def _events(response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_models_lists_names_and_limits(client):
    data = client.get("/api/models").json()
    names = [m["name"] for m in data["models"]]
    assert names == ["a/ckpt", "b/ckpt", "other/ckpt"]
    m = data["models"][0]
    assert m["layers"] == 2 and m["heads"] == 4 and m["context_size"] == 16 and m["step"] == 7
    assert m["tokenizer"] == "word" and m["vocab_size"] == len(VOCAB) and m["params"] > 0
    assert data["limits"]["max_new_tokens"] == 40
    assert not any("/" in str(v) and str(v).startswith("/") for v in (m["name"],))  # no paths


def test_generate_streams_tokens_then_done(client, models):
    body = {"prompt": "once upon a time", "greedy": True, "max_new_tokens": 12}
    events = _events(client.post("/api/generate", json=body))
    start, tokens, done = events[0], events[1:-1], events[-1]
    assert start["type"] == "start" and start["prompt_pieces"][0] == "<sot>"
    assert start["settings"]["greedy"] is True and start["window"] == 16
    assert [e["type"] for e in tokens] == ["token"] * len(tokens) and done["type"] == "done"
    assert [e["index"] for e in tokens] == list(range(len(tokens)))
    served = models.get(0)
    want = generate_ids(
        served.checkpoint.model,
        [start["prompt_ids"]],
        SampleConfig(greedy=True, max_new_tokens=12),
        window=16,
    ).new_ids[0]
    assert [e["id"] for e in tokens] == want == done["ids"][len(start["prompt_ids"]) :]
    assert done["new_tokens"] == len(want) and done["seconds"] >= 0
    shown = "".join(start["prompt_pieces"][1:] + [e["text"] for e in tokens if e["id"] > 2])
    assert shown.replace("<unk>", "") == done["text"].replace("<unk>", "")


def test_generate_uses_the_checkpoint_settings_and_seed(client):
    body = {"model": "b/ckpt", "prompt": "lily", "seed": 3, "max_new_tokens": 10}
    first = _events(client.post("/api/generate", json=body))
    again = _events(client.post("/api/generate", json=body))
    assert first[-1]["ids"] == again[-1]["ids"]  # seeded: the same story
    settings = first[0]["settings"]
    assert settings["temperature"] == 0.8 and settings["top_p"] == 0.95 and settings["seed"] == 3
    default = _events(client.post("/api/generate", json={"prompt": "lily"}))
    assert default[0]["settings"]["max_new_tokens"] == 40  # the checkpoint's 256, bounded


def test_serve_reads_checkpoints_as_generate_and_evaluate_do(assets, capsys):
    """--quantize and --window reach every served model, through the same rules as the other
    commands: int8 linear layers, and resolve_window's check of the window."""
    from gpt_study.generate.weights import Int8Linear

    paths = [str(assets[k]) for k in ("a", "b")]
    models = Models.load(paths, device="cpu", quantize="int8", window=8)
    for served in models.served:
        assert served.window == 8 and served.note is None
        linears = [m for m in served.checkpoint.model.modules() if isinstance(m, Int8Linear)]
        assert linears and not any(
            type(m) is torch.nn.Linear for m in served.checkpoint.model.modules()
        )
        whole = encode_prompt(served.checkpoint.tokenizer, TEXT, None)[0]
        assert len(whole) > 8 and served.encode_prompt(TEXT)[0] == whole[-8:]  # the most recent
    assert [s.window for s in Models.load(paths, device="cpu").served] == [16, 16]
    with pytest.raises(UserError, match="--window 20 is longer than the 16 positions"):
        Models.load(paths, device="cpu", window=20)  # learned positions: refused, as elsewhere
    assert main(["serve", "--checkpoint", paths[0], "--window", "20", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--window 20" in err[0]


def test_tokens_gives_each_token_its_probability_and_rivals(client, models):
    data = client.post("/api/tokens", json={"text": TEXT, "top_k": 3}).json()
    tokens = data["tokens"]
    assert tokens[0]["token"] == "<sot>" and tokens[0]["p"] is None
    assert tokens[-1]["token"] == "<eot>"  # a story is scored with its end
    ids = [t["id"] for t in tokens]
    scores = score_ids(models.get(0).checkpoint.model, ids, 16, 3)
    for n, t in enumerate(tokens[1:]):
        assert math.isclose(t["p"], float(scores.prob[n]), abs_tol=1e-6)
        probs = [a["p"] for a in t["top"]]
        assert (
            len(probs) == 3 and probs == sorted(probs, reverse=True) and probs[0] >= t["p"] - 1e-6
        )
    s = data["summary"]
    nll = sum(t["nll"] for t in tokens[1:])
    assert s["targets"] == len(ids) - 1 and math.isclose(s["nll"], nll / s["targets"], rel_tol=1e-4)
    assert math.isclose(s["bits_per_byte"], nll / math.log(2) / s["bytes"], rel_tol=1e-4)
    assert "".join(t["text"] for t in tokens[1:-1]).startswith("once upon a time")
    by_ids = client.post("/api/tokens", json={"ids": ids, "top_k": 3}).json()
    assert [t["p"] for t in by_ids["tokens"]] == [t["p"] for t in tokens]
    # a word vocabulary's ids do not spell the text's bytes: no bits per byte rather than another
    assert by_ids["summary"]["bytes"] is None and by_ids["summary"]["bits_per_byte"] is None
    assert by_ids["summary"]["nll"] == s["nll"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_ids_spell_the_bytes_of_their_text_wherever_the_tokenizer_is_lossless(kind):
    """The same stories as ids count the bytes that text counts (prepare's, evaluate's), for
    every tokenizer that decodes exactly; for the others there is no count."""
    from gpt_study.data.clean import clean_text
    from gpt_study.data.text import text_bytes
    from gpt_study.data.tokenizer import ByteTokenizer, ImportedTokenizer, WordTokenizer, train_bpe
    from gpt_study.evaluate.introspect import ids_bytes

    stories = [clean_text(t, kind == "word") for t in (TEXT, "Zoë's café: 3½ 🙂, then “hi”.")]
    bpe = lambda: train_bpe(stories * 20, vocab_size=300, lowercase=False)  # noqa: E731
    tok = {
        "word": lambda: WordTokenizer(VOCAB),
        "byte": ByteTokenizer,
        "bpe": bpe,
        "hf": lambda: ImportedTokenizer(bpe().tok, sot_id=1, eot_id=2, unk_id=None),
    }[kind]()
    ids = [i for story in stories for i in tok.encode(story, sot=True, eot=True)]
    want = text_bytes(stories) if tok.lossless else None
    assert ids_bytes(tok, ids) == want and (kind in ("bpe", "byte")) == (want is not None)
    assert ids_bytes(tok, ids[:-1]) == want  # a story not yet ended counts as far as it goes


def test_attention_rows_are_distributions_and_the_lens_ends_at_the_model(client):
    scored = client.post("/api/tokens", json={"text": TEXT, "top_k": 5}).json()["tokens"]
    ids = [t["id"] for t in scored]
    pos = 6
    data = client.post("/api/attention", json={"ids": ids, "position": pos}).json()
    assert data["layers"] == 2 and data["heads"] == 4 and data["window_start"] == 0
    assert len(data["tokens"]) == pos + 1 and data["next"]["id"] == ids[pos + 1]
    for layer, mean in zip(data["weights"], data["mean"], strict=True):
        for head in layer:
            assert len(head) == pos + 1 and math.isclose(sum(head), 1.0, abs_tol=1e-4)
        for j, m in enumerate(mean):
            assert math.isclose(m, sum(h[j] for h in layer) / 4, abs_tol=1e-5)
    lens = data["lens"]
    assert [r["layer"] for r in lens] == [0, 1, 2]
    # The last layer of the lens is the model's own prediction, as the tokens view shows it.
    assert lens[-1]["top"] == scored[pos + 1]["top"]
    assert math.isclose(lens[-1]["p_next"], scored[pos + 1]["p"], abs_tol=1e-5)


def test_attention_past_the_window_reads_the_window_that_scored_it(client):
    ids = [t["id"] for t in client.post("/api/tokens", json={"text": TEXT}).json()["tokens"]]
    assert len(ids) > 20
    data = client.post("/api/attention", json={"ids": ids, "position": 20}).json()
    assert data["window_start"] == 16 and len(data["tokens"]) == 5


def test_compare_same_vocabulary_per_token_and_eot(client):
    data = client.post("/api/compare", json={"models": [0, "b/ckpt"], "text": TEXT}).json()
    assert data["same_vocabulary"] and data["models"] == ["a/ckpt", "b/ckpt"]
    one = [client.post("/api/tokens", json={"model": m, "text": TEXT}).json() for m in (0, 1)]
    for k in (0, 1):
        assert data["summary"][k] == one[k]["summary"]
    for t, ta, tb in zip(
        data["tokens"][1:], one[0]["tokens"][1:], one[1]["tokens"][1:], strict=True
    ):
        assert t["nll"] == [ta["nll"], tb["nll"]]
        assert math.isclose(t["diff"], tb["nll"] - ta["nll"], abs_tol=1e-5)
    assert data["eot"]["count"] == 1
    same = client.post("/api/compare", json={"models": [1, 1], "text": TEXT}).json()
    assert all(t["diff"] == 0 for t in same["tokens"][1:])


def test_compare_other_vocabulary_gives_bits_per_byte_only(client):
    data = client.post("/api/compare", json={"models": [0, 2], "text": TEXT}).json()
    assert data["same_vocabulary"] is False and data["tokens"] is None
    assert data["summary"][0]["bytes"] == data["summary"][1]["bytes"]
    for k, model in enumerate((0, 2)):  # each model's own reading of the text, by the one view
        alone = client.post("/api/tokens", json={"model": model, "text": TEXT}).json()["summary"]
        assert data["summary"][k] == alone


def test_runs_list_and_detail(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["a", "nested/b"]
    assert runs[0]["last_step"] == 20 and runs[0]["best_valid_nll"] == 4.5
    detail = client.get("/api/runs/nested/b").json()
    assert detail["settings"]["train"]["lr"] == 2e-3 and len(detail["records"]) == 3
    assert client.get("/api/runs/a").json()["settings"]["train"]["lr"] == 1e-3


def test_a_damaged_run_is_listed_with_its_problem_and_the_others_still_show(
    models, assets, tmp_path
):
    root = write_runs(tmp_path / "runs")
    (root / "a" / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # replaced by a PNG
    (root / "c").mkdir()
    (root / "c" / "metrics.jsonl").write_text('[1, 2]\n"text"\n{"kind": "train", "step": 1}\n')
    with TestClient(create_app(models, Runs(root), Limits())) as c:
        r = c.get("/api/runs")
        assert r.status_code == 200, r.text
        runs = {x["name"]: x for x in r.json()["runs"]}
        assert "is damaged (not text)" in runs["a"]["problem"]
        assert runs["nested/b"]["last_step"] == 20 and "problem" not in runs["nested/b"]
        assert runs["c"]["records"] == 1  # lines that are not records are skipped
        bad = c.get("/api/runs/a")
        assert 400 <= bad.status_code < 500 and "is damaged" in bad.json()["error"]


BAD = [
    ("post", "/api/generate", {"model": 9}, 404, "no model 9: choose one of 0 (a/ckpt)"),
    ("post", "/api/generate", {"model": "x"}, 404, "no model 'x'"),
    ("post", "/api/generate", {"temperature": 0}, 422, "temperature 0.0 is out of range"),
    ("post", "/api/generate", {"top_p": 2}, 422, "top_p 2.0 is out of range"),
    ("post", "/api/generate", {"max_new_tokens": 41}, 422, "max_new_tokens 41 is over 40"),
    ("post", "/api/generate", {"max_new_tokens": 0}, 422, "max_new_tokens 0 is out of range"),
    ("post", "/api/generate", {"prompt": "a" * 201}, 413, "prompt has 201 characters"),
    ("post", "/api/generate", {"temprature": 1}, 422, "temprature: Extra inputs are not permitted"),
    ("post", "/api/generate", {"seed": "x"}, 422, "seed: Input should be a valid integer"),
    ("post", "/api/generate", {"prompt": ["a"]}, 422, "prompt: Input should be a valid string"),
    ("post", "/api/generate", {"seed": 2**70}, 422, "seed 1180591620717411303424 is out of range"),
    ("post", "/api/generate", {"seed": -1}, 422, "seed -1 is out of range"),
    ("post", "/api/tokens", {"text": "a" * 501}, 413, "text has 501 characters"),
    ("post", "/api/tokens", {"ids": [1] * 65}, 413, "ids has 65 tokens"),
    ("post", "/api/tokens", {"ids": [1, 999]}, 422, "token id 999 is out of range"),
    ("post", "/api/tokens", {"ids": [1, -1]}, 422, "token id -1 is out of range"),
    ("post", "/api/tokens", {"ids": [1]}, 422, "send at least 2 token ids"),
    ("post", "/api/tokens", {}, 422, "send either text or ids"),
    ("post", "/api/tokens", {"text": "a", "ids": [1, 2]}, 422, "send either text or ids"),
    ("post", "/api/tokens", {"text": "   "}, 422, "text is empty"),
    ("post", "/api/tokens", {"text": "lily", "top_k": 51}, 422, "top_k 51 is over 50"),
    ("post", "/api/tokens", {"text": "lily", "top_k": 0}, 422, "top_k: Input should be greater"),
    ("post", "/api/attention", {"text": TEXT}, 422, "position: Field required"),
    ("post", "/api/attention", {"text": "lily", "position": 3}, 422, "position 3 is out of range"),
    (
        "post",
        "/api/attention",
        {"text": "lily", "position": -1},
        422,
        "position -1 is out of range",
    ),
    ("post", "/api/compare", {"text": "lily", "models": [0]}, 422, "models"),
    ("post", "/api/compare", {"ids": [1, 5], "models": [0, 2]}, 422, "different vocabularies"),
    ("post", "/api/compare", {"text": "lily", "models": [0, 5]}, 404, "no model 5"),
    ("get", "/api/runs/nope", None, 404, "no run 'nope': choose one of a, nested/b"),
    ("get", "/api/runs/..%2F..%2Fetc", None, 404, "no run '../../etc'"),
    ("get", "/api/nothing", None, 404, "no route GET /api/nothing"),
    ("get", "/api/generate", None, 405, "GET /api/generate is not allowed: use POST"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD)
def test_bad_requests_get_a_clear_4xx(client, method, path, body, status, message):
    r = client.post(path, json=body) if method == "post" else client.get(path)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error and "\n" not in error, error


@pytest.mark.parametrize(
    "content,status,message",
    [
        (b"{not json", 422, "JSON decode error"),
        (b"[1, 2]", 422, "the body must be a JSON object"),
        (b'{"text": "' + b"a" * (1 << 20) + b'"}', 413, "request body over 1048576 bytes"),
    ],
)
def test_malformed_bodies(client, content, status, message):
    r = client.post("/api/tokens", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text


LONE = b"\\ud800"  # JSON may carry half of a surrogate pair; no UTF-8 text holds one


@pytest.mark.parametrize(
    "path,content",
    [
        ("/api/generate", b'{"prompt": "once ' + LONE + b'"}'),
        ("/api/generate", b'{"model": "' + LONE + b'"}'),
        ("/api/tokens", b'{"text": "lily ' + LONE + b'"}'),
        ("/api/attention", b'{"text": "' + LONE + b'", "position": 1}'),
        ("/api/compare", b'{"text": "' + LONE + b'"}'),
        ("/api/compare", b'{"text": "lily", "models": [0, "' + LONE + b'"]}'),
    ],
)
def test_text_that_is_not_utf8_gets_a_4xx_and_the_server_goes_on(client, path, content):
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "lone surrogate" in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.get("/api/models").status_code == 200


def test_gate_queues_then_refuses():
    async def scenario():
        gate = Gate(running=1, waiting=1, what="generations")
        await gate.acquire()  # running
        queued = asyncio.ensure_future(gate.acquire())  # waits
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="1 generations running and 1 waiting"):
            await gate.acquire()
        gate.release()
        await asyncio.wait_for(queued, 1)  # the queued one gets the slot
        gate.release()

    asyncio.run(scenario())


def test_the_page_ships_everything_it_loads(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), f  # nothing remote
    assert client.get("/static/../app.py").status_code == 404


@pytest.mark.parametrize("bind", ["127.0.0.1", "localhost", "127.0.0.2", "::1"])
def test_a_loopback_server_answers_only_its_own_names(models, bind):
    """Every loopback address serve may listen on gets the DNS-rebinding check (it was only the
    literal 127.0.0.1 and localhost: 127.0.0.2 and ::1 answered any Host, without a warning)."""
    from gpt_study.serve.limits import own_names

    hosts = own_names(bind)
    assert hosts is not None and bind.strip("[]") in hosts
    with TestClient(create_app(models, hosts=hosts), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/models").status_code == 200
        for ok in ("localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"):
            assert c.get("/api/models", headers={"host": ok}).status_code == 200, ok
        for bad in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80", ""):
            assert c.get("/api/models", headers={"host": bad}).status_code == 400, bad


def test_a_server_reachable_from_elsewhere_answers_any_name():
    from gpt_study.serve.limits import own_names

    assert own_names("0.0.0.0") is None


def test_cli_needs_the_extra_and_something_to_serve(monkeypatch, capsys, assets):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    assert main(["serve", "--checkpoint", str(assets["a"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        'gpt-study serve: error: serve needs uvicorn: pip install -e ".[serve]" in the gpt-study checkout'
    ]
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "nowhere", "--port", "0"]) == 2
    assert "no checkpoint at nowhere" in capsys.readouterr().err
    assert main(["serve", "--runs", str(assets["runs"]), "--max_concurrent", "0"]) == 2
    assert "--max_concurrent 0 is out of range" in capsys.readouterr().err


def test_cli_refuses_a_port_in_use(capsys, assets):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--runs", str(assets["runs"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err


@pytest.mark.parametrize(
    "host,warned", [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("localhost", False)]
)
def test_a_host_beyond_this_machine_is_said_out_loud(capsys, assets, monkeypatch, host, warned):
    """Nothing listens here: the address check and the server are stubbed, only the words are
    tested (a server under test listens on 127.0.0.1 only)."""
    from gpt_study.cli import serve as serve_cli

    class Quiet:
        def run(self):
            return None

    monkeypatch.setattr(serve_cli, "_check_address", lambda host, port: None)
    monkeypatch.setattr(serve_cli, "_StoppingServer", lambda config, stopping: Quiet())
    assert main(["serve", "--runs", str(assets["runs"]), "--host", host, "--port", "8765"]) == 0
    err = capsys.readouterr().err
    assert ("with no login: anyone there can run the models" in err) == warned, err


def test_same_names_are_numbered(assets):
    from gpt_study.serve.registry import _names

    assert _names([assets["a"], assets["a"]]) == ["a/ckpt", "a/ckpt (2)"]


def test_a_generate_request_takes_every_sampling_setting():
    """The body's sampling fields are SampleConfig's, each optional: a setting added there
    reaches the API (or this test says it was forgotten)."""
    import dataclasses

    from gpt_study.serve.schemas import GenerateRequest

    sampling = {f.name for f in dataclasses.fields(SampleConfig)}
    assert set(GenerateRequest.model_fields) - {"model", "prompt"} == sampling
    assert all(GenerateRequest.model_fields[n].default is None for n in sampling)
