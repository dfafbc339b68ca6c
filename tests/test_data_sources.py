"""Every source format, folders and globs, split naming, the Hub offline, and bad inputs."""

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from gpt_study.data.sources import Source, file_format, iter_stories, resolve_sources, split_of
from gpt_study.runtime.errors import UserError

STORIES = ["Once upon a time.\nThe end.", 'Lily said, "hi!"', "Ben ran \u2014 fast \U0001f642"]


def _txt(stories):
    return "".join(f"{s}\n<|endoftext|>\n" for s in stories)


def _read(path):
    return list(iter_stories(Source("train", path=path)))


def test_txt_with_endoftext_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text(_txt(STORIES) + "\n", encoding="utf-8")
    # Exactly the stories: the marker lines' own line breaks are not part of the raw text whose
    # length --min_chars reads (the study read the Hub's text field).
    assert _read(p) == STORIES


def test_txt_without_final_separator_and_blank_stories(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\n<|endoftext|>\n\n<|endoftext|>\ntwo<|endoftext|>three", encoding="utf-8")
    assert [s.strip() for s in _read(p)] == ["one", "two", "three"]


def test_jsonl_text_or_story_field(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": STORIES[0]}), "", json.dumps({"story": STORIES[1], "x": 1})]
    p.write_text("\n".join(lines + [json.dumps({"text": STORIES[2]})]) + "\n", encoding="utf-8")
    assert _read(p) == STORIES


def test_json_array_like_tinystories_all_data(tmp_path):
    p = tmp_path / "data00.json"
    p.write_text(json.dumps([{"story": s, "instruction": {}} for s in STORIES]), encoding="utf-8")
    assert _read(p) == STORIES


def test_parquet_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "train-00000.parquet"
    pq.write_table(pa.table({"text": STORIES + [None]}), p)
    assert _read(p) == STORIES


@pytest.mark.parametrize("name", ["a.txt.gz", "a.jsonl.gz"])
def test_gzip_of_text_formats(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".txt.gz"):
        data = _txt(STORIES)
    else:
        data = "\n".join(json.dumps({"text": s}) for s in STORIES)
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(data)
    assert [s.strip() for s in _read(p)] == STORIES


@pytest.mark.parametrize(
    "name, split",
    [
        ("train.txt", "train"),
        ("TinyStories-valid.txt", "valid"),
        ("tinystories_val.txt", "valid"),
        ("validation-00000-of-00001.parquet", "valid"),
        ("test.jsonl", "valid"),
        ("interval.txt", "train"),  # "val" only as a word of its own
        ("stories.txt", "train"),
    ],
)
def test_split_from_file_name(tmp_path, name, split):
    assert split_of(tmp_path / name) == split


def test_folder_and_glob(tmp_path):
    (tmp_path / "train.txt").write_text(_txt(STORIES))
    (tmp_path / "valid.txt").write_text(_txt(STORIES[:1]))
    (tmp_path / "SOURCES.md").write_text("# not a corpus")
    found = resolve_sources([str(tmp_path)])
    assert [(s.split, s.path.name) for s in found] == [
        ("train", "train.txt"),
        ("valid", "valid.txt"),
    ]
    found = resolve_sources([str(tmp_path / "*.txt"), str(tmp_path / "train.txt")])
    assert len(found) == 2  # duplicates dropped


def test_no_data_means_the_hub():
    found = resolve_sources([])
    assert [(s.split, s.hub_split) for s in found] == [("train", "train"), ("valid", "validation")]
    assert found[0].name == "hub:roneneldan/TinyStories/train"


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        resolve_sources([str(tmp_path / "nope.txt")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        resolve_sources([str(tmp_path / "empty.txt")])
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(UserError, match="unknown format"):
        resolve_sources([str(tmp_path / "a.csv")])
    with pytest.raises(UserError, match="no file matches"):
        resolve_sources([str(tmp_path / "*.parquet")])
    (tmp_path / "valid.txt").write_text("story")
    with pytest.raises(UserError, match="no training file"):
        resolve_sources([str(tmp_path / "valid.txt")])
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="holds no corpus files"):
        resolve_sources([str(tmp_path / "sub")])
    with pytest.raises(UserError, match="unknown format"):
        file_format(tmp_path / "x.gz")


def test_undecodable_bytes(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9 story\n<|endoftext|>\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        _read(p)


def test_json_without_text_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UserError, match="line 1 has no text or story field"):
        _read(p)
    p.write_text("{broken\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        _read(p)


def test_hub_unreachable_fails_fast_with_one_line(tmp_path):
    # Port 9 (discard) on localhost refuses connections: what an offline laptop sees.
    drop = {"HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "gpt_study", "prepare", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t < 15
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpt-study prepare: error: the Hugging Face Hub (127.0.0.1) is not reachable: "
        "pass --data with local files, e.g. --data ../shared/data/tinystories"
    ]
    assert not (tmp_path / "out").exists()


def test_hub_offline_mode_without_cache(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "gpt_study", "prepare", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t < 20
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "pass --data with local files, e.g. --data ../shared/data/tinystories"
    ), lines
