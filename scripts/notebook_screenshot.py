"""Regenerate the docs' picture of a run as a notebook shows it (``Run._repr_html_``).

    python scripts/notebook_screenshot.py docs/images/notebook-run.png

Needs chromium and Playwright (scripts/setup.sh --dev). Nothing is logged.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

import steer_ui  # noqa: E402


def main(out: str) -> None:
    model = steer_ui.load(device="cpu", dtype="float32")
    vec = model.vector("reconsideration")
    run = model.compare("Is 91 a prime number? Answer Yes or No.", rows=[(vec, 4), (vec, 8)], layers="15-18",
                        probe_every=1, max_new_tokens=32)
    page_file = Path(tempfile.mkdtemp()) / "run.html"
    page_file.write_text(f"<html><body style='font-family:sans-serif;margin:16px'>{run._repr_html_()}</body></html>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(page_file.as_uri())
        page.wait_for_selector(".main-svg")
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/images/notebook-run.png")
