"""Checkpoint folders: round trip, atomic saves, clear errors for damaged or mixed folders."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gpt_study import checkpoint as ckpt_mod
from gpt_study.checkpoint import load_checkpoint, save_checkpoint
from gpt_study.config.presets import preset_config
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

V = 51  # the vocabulary of the tiny_prepared fixture


def make(seed=0, **model):
    cfg = preset_config(
        "tiny", model=dict(vocab_size=V, d_model=32, n_heads=4, n_layers=1, **model)
    )
    torch.manual_seed(seed)
    return GPT(cfg.model), cfg


def test_round_trip(tiny_prepared, tmp_path):
    model, cfg = make()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, V, (2, 8))).sum().backward()
    opt.step()
    state = {"step": 7, "best_valid_nll": 2.5}
    # A wrapper like DDP or torch.compile must not leak its prefix into the saved keys.
    wrapped = torch.nn.Module()
    wrapped.module = model
    save_checkpoint(
        tmp_path / "c", wrapped, cfg, tiny_prepared / "tokenizer.json", state, opt.state_dict()
    )
    back = load_checkpoint(tmp_path / "c", optimizer=True)
    assert back.config == cfg and back.state == state
    assert back.tokenizer.vocab_size == V
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), back.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    opt2 = torch.optim.AdamW(back.model.parameters())
    opt2.load_state_dict(back.optimizer_state)
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert load_checkpoint(tmp_path / "c").optimizer_state is None  # only loaded when asked


def test_a_library_save_without_a_state_is_known_as_its_own_and_replaced(tiny_prepared, tmp_path):
    """A checkpoint is known by its state.json's step (``check_replaceable``'s mark): one saved
    without a state gets step 0, so the next save over it is allowed; another tool's folder of
    the same names is not replaced."""
    model, cfg = make()
    tok = tiny_prepared / "tokenizer.json"
    save_checkpoint(tmp_path / "c", model, cfg, tok)
    assert load_checkpoint(tmp_path / "c").state == {"step": 0}
    save_checkpoint(tmp_path / "c", model, cfg, tok, {"step": 3})
    assert load_checkpoint(tmp_path / "c").state["step"] == 3
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="is not a checkpoint gpt-study wrote"):
        save_checkpoint(theirs, model, cfg, tok)
    assert (theirs / "config.json").read_text() == '{"model_type": "gpt2"}'


def test_a_save_that_dies_leaves_the_previous_checkpoint(tiny_prepared, tmp_path, monkeypatch):
    tok = tiny_prepared / "tokenizer.json"
    first, cfg = make(seed=0)
    save_checkpoint(tmp_path / "last", first, cfg, tok, {"step": 1})
    second, _ = make(seed=1)

    def dies(*a, **kw):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "save_file", dies)
        with pytest.raises(UserError, match="still holds what it held before"):
            save_checkpoint(tmp_path / "last", second, cfg, tok, {"step": 2})
    back = load_checkpoint(tmp_path / "last")
    assert back.state == {"step": 1}
    assert torch.equal(back.model.head.weight, first.head.weight)
    # The next save clears the debris and completes.
    save_checkpoint(tmp_path / "last", second, cfg, tok, {"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["last"]
    assert load_checkpoint(tmp_path / "last").state == {"step": 2}


def test_killed_between_the_two_renames_loads_the_old_copy(tiny_prepared, tmp_path):
    model, cfg = make()
    save_checkpoint(tmp_path / "last", model, cfg, tiny_prepared / "tokenizer.json", {"step": 3})
    os.replace(tmp_path / "last", tmp_path / ".last.old")  # the moment between the renames
    assert load_checkpoint(tmp_path / "last").state == {"step": 3}
    save_checkpoint(tmp_path / "last", model, cfg, tiny_prepared / "tokenizer.json", {"step": 4})
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_half_written_or_missing_folders_are_refused(tiny_prepared, tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "half")


@pytest.mark.parametrize(
    "name,keep",
    [
        ("model.safetensors", 0),  # empty
        ("model.safetensors", 7),  # not even its header length
        ("model.safetensors", 0.5),  # the header, half the tensors
        ("optimizer.pt", 0),
        ("optimizer.pt", 60),
        ("optimizer.pt", 0.5),
        ("state.json", 0.5),  # torn JSON
    ],
)
def test_truncated_files_are_one_line_naming_the_file_and_the_way_out(
    tiny_prepared, tmp_path, name, keep
):
    model, cfg = make()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, V, (2, 8))).sum().backward()
    opt.step()
    state = {"step": 7, "best_valid_nll": 2.5, "metrics": list(range(50))}
    save_checkpoint(
        tmp_path / "c", model, cfg, tiny_prepared / "tokenizer.json", state, opt.state_dict()
    )
    file = tmp_path / "c" / name
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "c", optimizer=True)
    message = str(e.value)
    assert message.startswith(f"{file} is damaged (") and "\n" not in message
    assert message.endswith("use the other checkpoint (best/ or last/) or retrain")


def test_mixed_folders_are_refused(tiny_prepared, tmp_path):
    model, cfg = make()
    save_checkpoint(tmp_path / "c", model, cfg, tiny_prepared / "tokenizer.json")
    # A config from another run: different vocabulary than the tokenizer beside it.
    other = json.loads((tmp_path / "c" / "config.json").read_text())
    other["model"]["vocab_size"] = V + 1
    (tmp_path / "c" / "config.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match=f"tokenizer has {V} tokens but the model expects {V + 1}"):
        load_checkpoint(tmp_path / "c")
    # Weights from another architecture.
    save_checkpoint(tmp_path / "d", model, cfg, tiny_prepared / "tokenizer.json")
    deeper = json.loads((tmp_path / "d" / "config.json").read_text())
    deeper["model"]["n_layers"] = 2
    (tmp_path / "d" / "config.json").write_text(json.dumps(deeper))
    with pytest.raises(UserError, match="weights do not match config.json"):
        load_checkpoint(tmp_path / "d")
    wider = json.loads((tmp_path / "d" / "config.json").read_text())
    wider["model"].update(n_layers=1, d_ff=128)
    (tmp_path / "d" / "config.json").write_text(json.dumps(wider))
    with pytest.raises(UserError, match=r"has shape \(512,\) but config.json implies \(128,\)"):
        load_checkpoint(tmp_path / "d")
