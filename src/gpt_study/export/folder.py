"""``export_hf``: a checkpoint in, a folder that transformers' auto classes load out.

The folder is built under a temporary name beside ``out``, checked by loading it with
transformers (logits, greedy tokens, token ids: :mod:`~gpt_study.export.verify`), and only then
renamed into place, so a failed or interrupted export leaves ``out`` as it was. Like every other
gpt-study output it only ever replaces a folder that holds nothing but its own files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from gpt_study import __version__
from gpt_study.checkpoint import Checkpoint, load_checkpoint
from gpt_study.export.hf import (
    REMOTE_FILE,
    Layout,
    choose_layout,
    generation_config,
    hf_config,
    hf_weights,
    needs_remote_code,
)
from gpt_study.export.readme import readme
from gpt_study.export.tokenizer import exact_share, hf_tokenizer, tokenizer_config
from gpt_study.export.verify import (
    Checked,
    check_folder,
    held_out_texts,
    require_transformers,
)
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import (
    UMASK,
    FolderMark,
    check_replaceable,
    fresh_temp_folder,
    out_of_space,
    publish_folder,
    recover_folder,
    write_json_atomic,
    write_text_atomic,
)
from gpt_study.runtime.lock import folder_lock

__all__ = ["FILES", "ExportResult", "export_hf"]

FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    REMOTE_FILE,
    "README.md",
    "gpt_study_export.json",
)
MARK = FolderMark("gpt_study_export.json", (("gpt_study_version", ...),), "a gpt-study export")
_SAMPLES = ("once upon a time, there was a little girl named lily.", 'tom said, "i can\'t!"')


@dataclass
class ExportResult:
    """What was exported and how exactly; ``lines`` is what the command printed."""

    out: Path
    layout: str
    remote_code: bool
    tokenizer: str  # the kind
    lowercase: bool  # whether the vocabulary is lowercased (and the pipeline lowercases)
    exact_share: float | None  # share of held-out stories whose ids are gpt-study's
    exact_where: str  # on what it was measured, or why not
    checked: Checked
    lines: list[str]


def _write_files(tmp: Path, ckpt: Checkpoint, layout: Layout, remote: bool, hf_tok: Any) -> None:
    model, cfg = ckpt.model, ckpt.config
    save_file(hf_weights(model, layout, remote), str(tmp / "model.safetensors"), {"format": "pt"})
    os.chmod(tmp / "model.safetensors", 0o666 & ~UMASK)  # safetensors writes it 0600
    write_json_atomic(tmp / "config.json", hf_config(model, layout, remote, ckpt.tokenizer))
    write_json_atomic(tmp / "generation_config.json", generation_config(cfg.sample, ckpt.tokenizer))
    hf_tok.save(str(tmp / "tokenizer.json"))
    write_json_atomic(
        tmp / "tokenizer_config.json", tokenizer_config(ckpt.tokenizer, cfg.model.max_len)
    )
    if remote:
        shutil.copyfile(Path(__file__).with_name(REMOTE_FILE), tmp / REMOTE_FILE)


def _measure(ckpt: Checkpoint, hf_tok: Any) -> tuple[float | None, str, list[str]]:
    """Share of the checkpoint's held-out stories tokenized exactly as gpt-study does."""
    texts, where = held_out_texts(ckpt.config, ckpt.tokenizer.lowercase)
    share = exact_share(ckpt.tokenizer, hf_tok, texts) if texts else None
    return share, where, texts


def export_hf(
    checkpoint: str | os.PathLike, out: str | os.PathLike, log: Callable[[str], None] = print
) -> ExportResult:
    """Export ``checkpoint`` as a transformers folder at ``out`` (see the module docstring)."""
    require_transformers()
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    check_replaceable(out, FILES, "--out", inputs=[Path(ckpt.path)], mark=MARK)
    with folder_lock(out, "--out", warn=log):  # one writer per export folder, before any work
        recover_folder(out, "config.json")  # an export died between its two renames
        check_replaceable(out, FILES, "--out", inputs=[Path(ckpt.path)], mark=MARK)  # locked
        result = _export(ckpt, out, log)
    log(f"export: wrote {out} ({len(list(out.iterdir()))} files)")
    return result


def _export(ckpt: Checkpoint, out: Path, log: Callable[[str], None]) -> ExportResult:
    """Measure, write into a temp folder beside ``out``, check with transformers, publish."""
    layout = choose_layout(ckpt.config.model)
    remote = needs_remote_code(ckpt.model, layout)
    hf_tok = hf_tokenizer(ckpt.tokenizer)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(f"export: {line}")

    if remote and layout.remote is not None:
        ours = layout.remote
        say(
            f"{ours.what(ckpt.model)}, which no stock transformers class has: the folder holds "
            f"{REMOTE_FILE} ({ours.model_class}, {layout.stock_class} computing it); load it (and, "
            "with transformers 5, its tokenizer) with trust_remote_code=True"
        )
    share, where, _ = _measure(ckpt, hf_tok)
    kind = ckpt.tokenizer.kind
    if share is None:
        say(f"{kind} tokenizer: share of stories tokenized exactly as gpt-study does {where}")
    else:
        say(f"{kind} tokenizer: ids equal to gpt-study's on {share:.2%} of {where}")
    tmp = fresh_temp_folder(out)
    try:
        _write_files(tmp, ckpt, layout, remote, hf_tok)
        checked = check_folder(tmp, ckpt.model, ckpt.tokenizer, remote, ckpt.window, list(_SAMPLES))
        if (why := checked.disagreement()) is not None:
            raise UserError(
                f"transformers computes another model from the exported folder ({why}): "
                "nothing was written; please report it"
            )
        say(
            f"checked with transformers {checked.version}: logits max abs difference "
            f"{checked.logits_diff:.1e} (fp32, {checked.positions} positions); greedy "
            f"{checked.greedy_tokens} tokens equal; ids of {checked.ids_equal} of "
            f"{checked.ids_texts} sample texts equal"
        )
        lower = ckpt.tokenizer.lowercase
        result = ExportResult(out, layout.name, remote, kind, lower, share, where, checked, lines)
        write_text_atomic(tmp / "README.md", readme(result, ckpt))
        write_json_atomic(tmp / "gpt_study_export.json", _record(result, ckpt))
        publish_folder(tmp, out)
    except OSError as e:  # a full disk: the folder already at --out stays as it was
        raise out_of_space(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _record(result: ExportResult, ckpt: Checkpoint) -> dict[str, Any]:
    """``gpt_study_export.json``: where the folder came from and what was measured."""
    c = result.checked
    return {
        "gpt_study_version": __version__,
        "checkpoint": str(Path(ckpt.path).resolve()),
        "step": ckpt.state.get("step"),
        "layout": result.layout,
        "remote_code": result.remote_code,
        "tokenizer": result.tokenizer,
        "tokenizer_exact_share": result.exact_share,
        "tokenizer_exact_measured_on": result.exact_where,
        "transformers_version": c.version,
        "logits_max_abs_diff": c.logits_diff,
        "greedy_tokens_equal": c.greedy_equal,
        "context_size": ckpt.window,  # the window it was trained on (the study's name)
    }
