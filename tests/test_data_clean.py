"""The study's cleaning rules in its order, and our fast path that must equal ftfy.fix_text exactly."""

from pathlib import Path

import ftfy
import pytest

from gpt_study.data.clean import clean_text, fix_text

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"


def test_newline_becomes_a_space_not_nothing():
    # The study glued "shirt.\nLily" into "shirt.lily".
    assert clean_text("her shirt.\nLily smiled.", lowercase=True) == "her shirt. lily smiled."


def test_whitespace_runs_collapse_and_ends_are_stripped():
    assert clean_text("  a\t\tb \n\n c  \r\n", lowercase=False) == "a b c"


def test_lowercase_only_when_asked():
    assert clean_text("Lily and Ben", lowercase=True) == "lily and ben"
    assert clean_text("Lily and Ben", lowercase=False) == "Lily and Ben"


def test_ftfy_fixes_mojibake_and_uncurls_quotes():
    # TinyStories' Hub parquet holds mojibake like this in 51 of the first 1,000 valid stories.
    assert clean_text("Lilyâ€™s dog said â€œhiâ€\x9d", lowercase=False) == 'Lily\'s dog said "hi"'
    assert (
        clean_text("\u201cHi,\u201d she said. It\u2019s", lowercase=False)
        == '"Hi," she said. It\'s'
    )


def test_the_studys_order_lowercase_before_ftfy():
    # The study lowercased, then ran ftfy: lowercased mojibake is no longer recognised.
    assert clean_text("CAF\u00c3\u2030", lowercase=True) == "caf\u00e3\u2030"
    assert clean_text("CAF\u00c3\u2030", lowercase=False) == "CAF\u00c9"


def test_the_studys_order_newlines_go_before_ftfy():
    # ftfy sees the story as one line, so a "<" anywhere stops its HTML unescaping throughout
    # (ftfy first would unescape the first line, which holds no "<").
    assert clean_text("&amp; first\n<b> then", lowercase=False) == "&amp; first <b> then"
    assert clean_text("fish &amp; chips\nend", lowercase=False) == "fish & chips end"


def test_whitespace_that_ftfy_makes_still_collapses():
    # ftfy runs last, and an entity can turn into whitespace: the result keeps single spaces.
    assert clean_text("a &#10; b&nbsp;&nbsp;c", lowercase=False) == "a b c"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii, nothing to fix.\n",
        "fish &amp; chips",
        "a <b> tag\nthen &amp; later",  # a '<' stops HTML unescaping for the lines after it
        "&amp; first\n<b> then",
        "bell\x07 and escape \x1b[31mred\x1b[0m",
        "carriage\r\nreturns\rhere",
        "caf\u00e9 cafe\u0301 \ufb01ne \uff2c\uff2f\uff35\uff24",
        "line\u2028sep\x85nel\x0bvt\x0cff",
        "Lilyâ€™s\nplain\nâ€œquotedâ€\x9d\n",
    ],
)
def test_fast_fix_text_equals_ftfy(text):
    assert fix_text(text) == ftfy.fix_text(text)


def test_fast_fix_text_equals_ftfy_on_the_shared_sample():
    if not SAMPLE.is_dir():
        pytest.skip("shared TinyStories sample not present")
    text = (SAMPLE / "valid.txt").read_text(encoding="utf-8")
    stories = text.split("\n<|endoftext|>\n")
    assert len(stories) > 900
    assert [fix_text(s) for s in stories] == [ftfy.fix_text(s) for s in stories]
