"""The page in a real headless browser (Debian's chromium, driven by Playwright): type a prompt,
see the story and its coloured tokens, click a token, see its attention and logit lens."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
)

from serve_fixtures import running, write_checkpoint, write_runs  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless and quiet: no GPU, and none of the background calls a browser makes to the internet.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium"
)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    cks = [write_checkpoint(root / n, seed=s) for n, s in (("a", 0), ("b", 1))]
    with running(cks, runs=write_runs(root / "runs")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, page_url):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(page_url)
    page.wait_for_selector("#model option", state="attached")
    yield page
    assert not problems, problems
    remote = [u for u in requested if not u.startswith(page_url) and not u.startswith("data:")]
    assert not remote, remote  # offline: everything comes from the server itself
    page.close()


def test_write_colour_and_inspect_a_token(page):
    page.fill("#prompt", "once upon a time there was a girl")
    page.fill("#max_new_tokens", "12")
    page.fill("#seed", "1")
    page.click("#write")
    page.wait_for_selector("#write-summary:not(:empty)")
    tokens = page.locator("#story .tok")
    n = tokens.count()
    assert n >= 10  # <sot>, the prompt's 8 words, what the model wrote
    assert page.locator("#story").inner_text().startswith("<sot>once upon a time")
    colours = {tokens.nth(i).evaluate("e => e.style.background") for i in range(1, n)}
    assert len(colours) > 2 and all(c.startswith("rgb") or c.startswith("hsl") for c in colours)
    assert "bits/byte" in page.inner_text("#write-summary")

    tokens.nth(6).click()
    page.wait_for_selector("#lens tr >> nth=3")
    assert page.is_visible("#inspector")
    assert page.inner_text("#insp-title").startswith("token 6:")
    assert page.locator("#insp-alts tr").count() == 5
    # 2 layers x (4 heads + their mean) rows, and a header of the 6 tokens before token 6.
    assert page.locator("#attn-grid tr").count() == 1 + 2 * 5
    assert page.locator("#attn-grid tr").first.locator("th.col").count() == 6
    assert page.locator("#attn-text .tok").count() == 6
    assert "layer 2, mean of 4 heads" in page.inner_text("#attn-which")
    page.locator("#attn-grid tr").nth(2).click()  # layer 1, head 1
    assert "layer 1, head 1" in page.inner_text("#attn-which")
    page.check("input[name=query][value=this]")
    page.wait_for_selector("#attn-text .tok >> nth=6")  # now the token itself reads 0..6
    assert page.locator("#lens tr").count() == 1 + 3  # embeddings, after layer 1, after layer 2


def test_read_compare_and_runs_views(page):
    page.click("#tabs button[data-view=read]")
    page.fill("#read-text", "Lily liked to play in the park with her dog.")
    page.click("#read")
    page.wait_for_selector("#read-tokens .tok")
    assert "1 story" in page.inner_text("#read-status")

    page.click("#tabs button[data-view=compare]")
    page.click("#compare")
    page.wait_for_selector("#compare-tokens .tok")
    assert page.locator("#compare-summary tr").count() == 3
    assert "bits per byte: A" in page.inner_text("#compare-status")

    page.click("#tabs button[data-view=runs]")
    page.wait_for_selector("#run-settings tr >> nth=3")
    assert page.locator("#run-list tr").count() == 3  # header, a, nested/b
    assert page.locator("#run-settings tr.differs").count() >= 1  # their lr differs
