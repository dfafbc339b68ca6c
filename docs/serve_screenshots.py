"""Take the screenshots in docs/serve.md: each view of ``gpt-study serve`` in headless chromium.

    gpt-study prepare --data ../shared/data/tinystories --out /tmp/serve-data
    gpt-study train --preset tiny --data /tmp/serve-data --save_root /tmp/serve-runs/run400 --max_steps 400 --threads 1
    gpt-study train --preset tiny --data /tmp/serve-data --save_root /tmp/serve-runs/early --max_steps 100 --threads 1
    python docs/serve_screenshots.py --checkpoint /tmp/serve-runs/run400/best \\
        --checkpoint /tmp/serve-runs/early/best --runs /tmp/serve-runs

Needs the ``test`` extra (Playwright) and Debian's chromium (``apt-get install -y chromium``);
Playwright drives that browser, so ``playwright install`` (a download) is never needed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "Once upon a time, there was a little dog named Max."


def _serve(checkpoints: list[str], runs: str | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gpt_study", "serve", "--port", str(port), "--threads", "1"]
    for ck in checkpoints:
        cmd += ["--checkpoint", ck]
    if runs:
        cmd += ["--runs", runs]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start")


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url)
        page.wait_for_selector("#model option", state="attached")
        page.fill("#prompt", PROMPT)
        page.fill("#seed", "3")
        page.fill("#max_new_tokens", "120")
        page.click("#write")
        page.wait_for_selector("#write-summary:not(:empty)", timeout=120_000)
        page.screenshot(path=out / "serve-write.png")

        page.click("#tabs button[data-view=read]")
        page.click("#read")
        page.wait_for_selector("#read-tokens .tok")
        page.click("#read-tokens .tok[data-i='33']")  # "ball", after "she saw a big red"
        page.wait_for_selector("#lens tr >> nth=4")
        page.screenshot(path=out / "serve-read.png")
        page.locator("#attn-grid").scroll_into_view_if_needed()
        page.screenshot(path=out / "serve-attention.png")
        page.locator("#lens").scroll_into_view_if_needed()
        page.screenshot(path=out / "serve-lens.png")

        page.click("#tabs button[data-view=compare]")
        page.click("#compare")
        page.wait_for_selector("#compare-tokens .tok")
        page.screenshot(path=out / "serve-compare.png")

        page.click("#tabs button[data-view=runs]")
        page.wait_for_selector("#run-settings tr >> nth=3")
        page.screenshot(path=out / "serve-runs.png")
        browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--runs", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent))
    args = p.parse_args()
    proc, url = _serve(args.checkpoint, args.runs)
    try:
        shoot(url, Path(args.out))
    finally:
        proc.terminate()
        proc.wait(30)
    for f in sorted(Path(args.out).glob("serve-*.png")):
        print(f"{f} {f.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
