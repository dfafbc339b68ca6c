"""Allowed values: every config field with ``choices`` refuses anything else, from a constructor,
from the one config loader and from a flag, and no enum-like ``str`` field goes without them.

The fields are found by walking the config dataclasses from :class:`Config`, sections inside
sections included, so a new section or a new field is covered without touching this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import typing

import pytest

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import Config, config_to_dict, load_config, save_config
from gpt_study.runtime.errors import UserError

# str fields whose values are open-ended: paths, names, notes, and --device (cuda:N), which
# runtime.resolve_device checks. Config.preset is a record; presets.preset_config checks names.
FREE_TEXT = {
    "Config.preset",
    "DataConfig.data",
    "DataConfig.dataset_root",
    "DataConfig.out",
    "DataConfig.tokenizer_from",
    "TrainConfig.data",
    "TrainConfig.init_from",
    "TrainConfig.save_root",
    "RuntimeConfig.device",
    "LogConfig.wb_project",
    "LogConfig.wb_name",
    "LogConfig.wb_notes",
    "LogConfig.wb_tags",
}


def config_classes(cls: type = Config, path: tuple[str, ...] = ()) -> list[tuple[tuple, type]]:
    """(path in config.json, class) for ``Config`` and every dataclass nested in it:
    ``("train", "optim")`` for ``Config.train.optim``."""
    out = [(path, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += config_classes(hints[f.name], (*path, f.name))
    return out


def _config_with(section: tuple, f: dataclasses.Field, value: object) -> Config:
    """A Config whose setting ``f`` (at ``section``) is ``value``: the top section takes it by
    name, its flat name where it sits deeper (``TrainConfig(dtype=...)``)."""
    if not section:
        return Config(**{f.name: value})
    top = typing.get_type_hints(Config)[section[0]]
    return Config(**{section[0]: top(**{f.name: value})})


def choice_fields() -> list[tuple[tuple, type, dataclasses.Field]]:
    return [
        (section, cls, f)
        for section, cls in config_classes()
        for f in dataclasses.fields(cls)
        if "choices" in f.metadata
    ]


def _is_str(hint: object) -> bool:
    """str, str | None, list[str] and tuple[str, ...]: a field a word can be typed into."""
    if hint is str:
        return True
    return any(_is_str(a) for a in typing.get_args(hint))


def _bogus(cls: type, f: dataclasses.Field) -> object:
    hint = typing.get_type_hints(cls)[f.name]
    return ["bogus"] if typing.get_origin(hint) is list else "bogus"


def _ids(items: list) -> list[str]:
    return [f"{cls.__name__}.{f.name}" for _, cls, f in items]


FIELDS = choice_fields()


def test_the_walk_finds_every_section_and_the_known_choices():
    names = {cls.__name__ for _, cls in config_classes()}
    assert {"Config", "GPTConfig", "TrainConfig", "SampleConfig", "DataConfig"} <= names
    assert {"OptimConfig", "ScheduleConfig", "RuntimeConfig", "ValidConfig"} <= names
    found = set(_ids(FIELDS))
    for known in ("ScheduleConfig.lr_schedule", "RuntimeConfig.dtype", "GPTConfig.mlp"):
        assert known in found


def _refused(make, f: dataclasses.Field) -> str:
    with pytest.raises(UserError) as e:
        make()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert f"--{f.name}" in msg and "bogus" in msg
    assert all(str(c) in msg for c in f.metadata["choices"]), msg
    return msg


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=_ids(FIELDS))
def test_a_bogus_value_is_refused_by_the_constructor(section, cls, f):
    _refused(lambda: cls(**{f.name: _bogus(cls, f)}), f)


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=_ids(FIELDS))
def test_a_bogus_value_in_config_json_is_refused_by_the_loader(tmp_path, section, cls, f):
    d = config_to_dict(Config())
    functools.reduce(dict.__getitem__, section, d)[f.name] = _bogus(cls, f)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    _refused(lambda: load_config(path), f)


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=_ids(FIELDS))
def test_a_bogus_flag_is_refused_with_the_same_line(section, cls, f):
    if not f.metadata.get("cli", True):
        pytest.skip("not a flag")
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, cls)
    args = parser.parse_args([f"--{f.name}", "bogus"])  # argparse only shows the choices
    from_flag = _refused(lambda: dataclass_overrides(args, cls), f)
    assert from_flag == _refused(lambda: cls(**{f.name: _bogus(cls, f)}), f)


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=_ids(FIELDS))
def test_every_allowed_value_is_accepted_and_survives_a_reload(tmp_path, section, cls, f):
    for value in f.metadata["choices"]:
        cls(**{f.name: value})
        save_config(tmp_path / "config.json", _config_with(section, f, value))
        cfg = load_config(tmp_path / "config.json")
        assert getattr(functools.reduce(getattr, section, cfg), f.name) == value


def test_every_str_field_declares_choices_or_is_free_text():
    unlisted, stale = [], set(FREE_TEXT)
    for _, cls in config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{cls.__name__}.{f.name}"
            stale.discard(name)
            if _is_str(hints[f.name]) and "choices" not in f.metadata and name not in FREE_TEXT:
                unlisted.append(name)
    assert not unlisted, f"give these fields choices=(...) or add them to FREE_TEXT: {unlisted}"
    assert not stale, f"FREE_TEXT names fields that are gone: {sorted(stale)}"
