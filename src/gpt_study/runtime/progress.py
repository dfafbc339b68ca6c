"""Progress bars for long work (prepare, train, evaluate), the same on every command.

``enabled=None`` (the default of every ``--progress/--no-progress`` flag) draws a bar only when
stderr is a terminal, so pipes and log files never get one. Bars are not left behind when they
close, so an error line is never preceded by half a bar.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(enabled: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar (``kw`` as tqdm's) that is on when ``enabled``, or on a terminal when None."""
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(disable=None if enabled is None else not enabled, **kw)
