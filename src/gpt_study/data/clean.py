"""The study's cleaning rules, in the study's order, with its newline bug fixed.

The study dropped stories whose raw text is shorter than 300 characters, then deleted newlines,
which glued "shirt.\\nLily" into "shirt.lily", lowercased the text for the word vocabulary and
ran ``ftfy.fix_text`` last. Here a newline (any whitespace run) becomes one space instead; the
order stays the study's, which matters: ftfy then sees one line (so a ``<`` anywhere stops its
HTML unescaping for the whole story) and lowercased mojibake ("CAFÃ‰" -> "cafã‰", which ftfy
no longer recognises). Generation runs prompts through :func:`clean_text` too, so a prompt is
tokenized exactly like the training text.
"""

from __future__ import annotations

import re

import ftfy

# Characters that ftfy.fix_text could change inside plain ASCII text: "&" (HTML entities) and
# control characters. A line with none of them and nothing beyond ASCII is returned unchanged by
# ftfy, so we skip the call; tests check this against ftfy itself on the whole sample.
_NEEDS_FTFY = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def fix_text(text: str) -> str:
    """Exactly ``ftfy.fix_text(text)``, faster on mostly-ASCII text (docs/train.md, "Measurements").

    ftfy fixes each line on its own (its segments end at ``\\n``), and once a line holds ``<`` it
    stops unescaping HTML for the rest of the text. We follow the same rules but hand only the
    lines that could change to ftfy.
    """
    if not _NEEDS_FTFY.search(text):
        return text
    out = []
    unescape = "auto"
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i < len(lines) - 1:
            line += "\n"
        if unescape == "auto" and "<" in line:
            unescape = False
        if _NEEDS_FTFY.search(line):
            line = ftfy.fix_text(line, unescape_html=unescape)
        out.append(line)
    return "".join(out)


def clean_words(text: str, lowercase: bool) -> list[str]:
    """The words of :func:`clean_text` (its text split on single spaces), without joining them.

    Whitespace runs to one space, lowercase, then ``ftfy.fix_text``, which can make whitespace
    again (``&nbsp;``, ``&#10;``), so its result is split once more. Lowercasing commutes with
    the whitespace split, so text that ftfy would leave alone is split just once.
    """
    if lowercase:
        text = text.lower()
    if _NEEDS_FTFY.search(text):
        return fix_text(" ".join(text.split())).split()
    return text.split()


def clean_text(text: str, lowercase: bool) -> str:
    """The study's cleaning: every whitespace run (newlines included) to one space, lowercase,
    then ``ftfy.fix_text``.

    The result has no leading or trailing space and no two spaces in a row, which the word
    tokenizer relies on (it splits on single spaces).
    """
    return " ".join(clean_words(text, lowercase))
