"""The README's screenshots of `capitu serve`: a study's models in Debian's headless Chromium.

    python docs/screenshots.py studies/tiny     # writes docs/serve-*.png (English) and docs/serve-*-pt.png
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

from capitu.pages import PAGE_WORDS
from capitu.serve import create_app

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    study, out = Path(sys.argv[1]), Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = uvicorn.Server(uvicorn.Config(create_app([study], votes=Path(tmp) / "votes.sqlite"), port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            for language, suffix in (("en", ""), ("pt", "-pt")):  # the README's, then the LEIAME's
                shoot(browser.new_page(viewport={"width": 1200, "height": 760}), f"http://127.0.0.1:{port}/",
                      language, lambda name: str(out / f"serve-{name}{suffix}.png"))
            browser.close()
        server.should_exit = True


def shoot(page, url: str, language: str, path) -> None:
    """Side by side, four blind votes, the ranking: the page in `language`, saved at path(view)."""
    words = PAGE_WORDS[language]
    page.goto(f"{url}?lang={language}")
    page.fill("#prompt", "Era uma vez um rapaz que")
    page.click("#generate")
    for column in page.locator("#side .column").all():
        expect(column.locator(".rate")).to_contain_text("tokens/s", timeout=120_000)
    page.screenshot(path=path("side-by-side"), full_page=True)
    page.click("#tab-blind")
    for choice in ("A", "B", "A", "tie"):
        page.click("#draw")
        expect(page.locator("#choices")).to_be_visible(timeout=120_000)
        page.click(f"#choices button[data-choice='{choice}']")
        expect(page.locator("#verdict")).to_contain_text(words["recorded"].strip())
    page.screenshot(path=path("blind"), full_page=True)
    page.click("#tab-ranking")
    expect(page.locator("#ranking-summary")).to_contain_text(f"{words['votes']}.")
    page.screenshot(path=path("ranking"), full_page=True)


if __name__ == "__main__":
    main()
