"""``import_hf``: a transformers model (a Hub name or a folder) in, a gpt-study checkpoint out.

The way back of ``export``, through the same tables (:mod:`~gpt_study.export.layouts`): the
model's class picks the layout, its ``config.json`` becomes gpt-study's options (a value no option
computes is refused in one line, never imported approximately), its weights are renamed, joined and
transposed back, and its own ``tokenizer.json`` becomes an ``hf`` tokenizer
(:class:`~gpt_study.data.tokenizer.ImportedTokenizer`) that says which of its ids play ``<sot>``,
``<eot>`` and ``<unk>``. Before anything is written, transformers' model and gpt-study's are
compared (:func:`~gpt_study.export.verify.compare`): logits within 1e-4 in fp32 and the same
greedy tokens, else nothing is written. The checkpoint goes through
:func:`~gpt_study.checkpoint.save_checkpoint` like any run's; ``generate``, ``serve``,
``evaluate``, ``compare`` and ``train --init_from`` read it as any other.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as LibTokenizer

from gpt_study import __version__
from gpt_study.checkpoint import FILES as CHECKPOINT_FILES
from gpt_study.checkpoint import STATE, save_checkpoint
from gpt_study.config import Config, DataConfig, GPTConfig, SampleConfig, TrainConfig
from gpt_study.data.tokenizer import ImportedTokenizer
from gpt_study.data.tokenizer.imported import published_roles
from gpt_study.export.layouts import Layout, Remote, from_hf_config, from_hf_weights
from gpt_study.export.neo import IMPORT_ONLY
from gpt_study.export.tables import LAYOUTS
from gpt_study.export.verify import Checked, compare, load_options
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import (
    TRANSFORMERS_INSTALL,
    UserError,
    check_hf_source,
    muted,
    read_error_line,
    read_errors,
    require,
)
from gpt_study.runtime.files import FolderMark, check_replaceable
from gpt_study.runtime.lock import folder_lock

__all__ = ["MAX_WINDOW", "ImportResult", "import_hf", "supported"]

MAX_WINDOW = 2048
"""The window an imported checkpoint records (its model's positions, at most this): what
generation and evaluation read by default; ``--window`` changes it."""

_SAMPLES = ("Once upon a time, there was a little girl named Lily.", 'Tom said, "I can\'t!"')
# import replaces only a checkpoint it imported, never a trained one (a run's last/ or best/)
IMPORTED = FolderMark(STATE, (("step", ...), ("imported", ...)), "a checkpoint gpt-study imported")
# every layout import reads: export's, then those it never writes
READ: tuple[Layout, ...] = (*LAYOUTS, *IMPORT_ONLY)


def _remotes() -> list[Remote]:
    return [layout.remote for layout in READ if layout.remote is not None]


def _remote_classes() -> set[str]:
    return {r.model_class for r in _remotes()}


def _our_class(name: str) -> Any:
    """A class of gpt-study's exported code, from our own copy (never a folder's)."""
    from gpt_study.export import modeling_gpt_study

    return getattr(modeling_gpt_study, name)


def supported() -> str:
    """The classes import reads, in words."""
    names = [c for layout in READ for c in layout.classes if c not in _remote_classes()]
    return f"{', '.join(names)} (and folders gpt-study exported)"


def require_transformers() -> Any:
    """The transformers module, or a one-line error naming ``import`` and how to install it."""
    return require("transformers", "import", TRANSFORMERS_INSTALL)


@dataclass
class ImportResult:
    """What was imported and how exactly; ``lines`` is what the command printed."""

    out: Path
    source: str
    layout: str
    model_class: str
    config: GPTConfig
    checked: Checked
    lines: list[str]


def _refuse(source: str, why: str) -> UserError:
    return UserError(f"cannot import {source}: {why}; nothing was written")


def _hf_config(transformers: Any, source: str) -> Any:
    """transformers' config of ``source``; gpt-study's own exported class read with our copy of
    its code (never the folder's)."""
    try:
        path = Path(source) / "config.json"
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        ours = next((r for r in _remotes() if r.model_type == raw.get("model_type")), None)
        if ours is not None:
            return _our_class(ours.config_class).from_pretrained(source)
        return transformers.AutoConfig.from_pretrained(source)
    except read_errors() as e:
        first = read_error_line(e)
        raise _refuse(source, f"transformers cannot read its config ({first})") from None


def _layout(source: str, hf_cfg: Any) -> tuple[Layout, str]:
    """The layout of the model's class (its ``architectures``, else its ``model_type``)."""
    archs = list(getattr(hf_cfg, "architectures", None) or [])
    if not archs:
        stock = {layout.model_type: layout.stock_class for layout in READ}
        archs = [stock.get(hf_cfg.model_type, hf_cfg.model_type)]
    for layout in READ:
        if archs[0] in layout.classes:
            return layout, archs[0]
    raise UserError(
        f"cannot import {source}: it is a {archs[0]} (no gpt-study layout computes it); "
        f"gpt-study imports {supported()}: score it with `gpt-study evaluate --hf {source}` instead"
    )


def _tokenizer(transformers: Any, source: str, hf_cfg: Any, vocab_size: int) -> tuple[Any, Any]:
    """(transformers' tokenizer, gpt-study's ``hf`` tokenizer) of ``source``'s tokenizer.json."""
    try:
        hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(source)
    except read_errors() as e:
        first = read_error_line(e)
        raise _refuse(
            source, f"no tokenizer.json that the tokenizers library reads ({first})"
        ) from None
    lib = LibTokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    try:
        ours = ImportedTokenizer(lib, *published_roles(hf_tok, hf_cfg), vocab_size, source)
    except UserError as e:
        raise _refuse(source, str(e)) from None
    return hf_tok, ours


def _model(transformers: Any, source: str, hf_cfg: Any, cls: str) -> Any:
    """transformers' model in fp32; gpt-study's exported class from our own copy of its code."""
    try:
        if cls in _remote_classes():
            return _our_class(cls).from_pretrained(source, **load_options(transformers))
        return transformers.AutoModelForCausalLM.from_pretrained(
            source, config=hf_cfg, **load_options(transformers)
        )
    except read_errors() as e:
        first = read_error_line(e)
        raise _refuse(source, f"transformers cannot load its weights ({first})") from None


def _our_model(hf: Any, cfg: GPTConfig, layout: Layout, source: str) -> GPT:
    """gpt-study's model holding ``hf``'s weights, renamed through the layout's table."""
    buffers = {name for name, _ in hf.named_buffers()}
    theirs = {k: v.detach().float() for k, v in hf.state_dict().items() if k not in buffers}
    try:
        ours = from_hf_weights(theirs, layout, cfg)
    except UserError as e:
        raise _refuse(source, str(e)) from None
    model = GPT(cfg)
    missing, unexpected = model.load_own_weights(ours)
    if missing or unexpected:
        raise _refuse(
            source, f"its weights lack {(missing + unexpected)[0]}, which its config implies"
        )
    return model.eval()


def _config(cfg: GPTConfig, source: str, tok: ImportedTokenizer) -> Config:
    """The checkpoint's Config: the model's options; its whole context (at most
    :data:`MAX_WINDOW`) as the window; the tokenizer recorded as taken from ``source``."""
    window = min(cfg.max_len, MAX_WINDOW)
    train = TrainConfig(context_size=window, study_rows=False)
    data = DataConfig(tokenizer="hf", tokenizer_from=source, vocab_size=tok.vocab_size)
    return Config(model=cfg, train=train, sample=SampleConfig(), data=data, preset="import")


def import_hf(
    source: str | os.PathLike, out: str | os.PathLike, log: Callable[[str], None] = print
) -> ImportResult:
    """Import ``source`` (a Hub name or a folder) as a checkpoint at ``out`` (see the module
    docstring)."""
    transformers = require_transformers()
    with muted(transformers):
        return _import(transformers, str(source), Path(out), log)


def _import(transformers: Any, source: str, out: Path, log: Callable[[str], None]) -> ImportResult:
    local = [Path(source)] if Path(source).exists() else []
    check_replaceable(out, CHECKPOINT_FILES, "--out", inputs=local, mark=IMPORTED)
    check_hf_source(source)
    hf_cfg = _hf_config(transformers, source)
    layout, cls = _layout(source, hf_cfg)
    try:
        cfg = from_hf_config(hf_cfg.to_dict(), layout, cls)
    except UserError as e:
        raise _refuse(source, f"{cls} with {e}") from None
    hf_tok, tok = _tokenizer(transformers, source, hf_cfg, cfg.vocab_size)
    hf = _model(transformers, source, hf_cfg, cls)
    model = _our_model(hf, cfg, layout, source)
    config = _config(cfg, source, tok)
    checked = compare(
        hf, model, tok, config.train.window, list(_SAMPLES),
        lambda t: hf_tok(t, add_special_tokens=False).input_ids == tok.encode(t),
    )  # fmt: skip
    if (why := checked.disagreement()) is not None:
        raise _refuse(source, f"gpt-study computes another model than transformers ({why}); "
                      "please report it")  # fmt: skip
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(f"import: {line}")

    say(
        f"{cls} as the {layout.name} layout: {model.num_params():,} parameters; tokenizer "
        f"<sot> {tok.sot_id}, <eot> {tok.eot_id}, <unk> {tok.unk_id}"
    )
    if layout.note is not None and (note := layout.note(hf_cfg.to_dict(), cfg)):
        say(note)
    say(
        f"checked with transformers {checked.version}: logits max abs difference "
        f"{checked.logits_diff:.1e} (fp32, {checked.positions} positions); greedy "
        f"{checked.greedy_tokens} tokens equal; ids of {checked.ids_equal} of "
        f"{checked.ids_texts} sample texts equal"
    )
    state = {"step": 0, "imported": _record(source, layout, cls, checked)}
    with folder_lock(out, "--out", warn=say), tempfile.TemporaryDirectory() as tmp:
        check_replaceable(out, CHECKPOINT_FILES, "--out", inputs=local, mark=IMPORTED)  # locked
        tok.save(Path(tmp) / "tokenizer.json")
        save_checkpoint(out, model, config, Path(tmp) / "tokenizer.json", state)
    say(f"wrote {out}")
    return ImportResult(out, source, layout.name, cls, cfg, checked, lines)


def _record(source: str, layout: Layout, cls: str, c: Checked) -> dict[str, Any]:
    """What ``state.json`` keeps of the import: where from, and what was measured."""
    return {
        "source": source,
        "class": cls,
        "layout": layout.name,
        "gpt_study_version": __version__,
        "transformers_version": c.version,
        "logits_max_abs_diff": c.logits_diff,
        "greedy_tokens_equal": c.greedy_equal,
    }
