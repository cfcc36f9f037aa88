"""Regenerate the docs' screenshots of the dashboard on the bundled model at 1440x900: its first screen,
the three-vector example run to the end, and the budget example (the page's top 1440x1240 for runs:
streams and chart).

    python scripts/screenshot.py [FOLDER]      # default docs/images: first-screen.png, screenshot.png, budget-run.png

Needs chromium and Playwright (scripts/setup.sh --dev). Uses a throwaway session log.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from steer_ui.app.launch import create_app, launch_kwargs  # noqa: E402


def main(folder: Path) -> None:
    db = Path(tempfile.mkdtemp()) / "screenshot.sqlite"
    demo, dash = create_app(db=str(db), device="cpu", dtype="float32")
    demo.queue().launch(server_name="127.0.0.1", server_port=7869, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto("http://127.0.0.1:7869/")
            expect(page.locator("#su-examples tbody tr").first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=folder / "first-screen.png")
            run_example(page, "Is 17 x 23 greater than 400?", folder / "screenshot.png")  # three vectors
            page.get_by_text("Examples", exact=True).first.click()  # closed by the run: open it again
            run_example(page, "Answer in one short sentence.", folder / "budget-run.png")  # budget beside vectors
            browser.close()
    finally:
        demo.close()


def run_example(page: Page, text: str, out: Path) -> None:
    page.get_by_text(text).first.click()
    expect(page.get_by_label("Layers", exact=True)).not_to_have_value("", timeout=15_000)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^streaming:"))).to_be_visible(timeout=60_000)  # not the last run's status
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=300_000)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(1000)
    page.screenshot(path=out, full_page=True, clip={"x": 0, "y": 0, "width": 1440, "height": 1240})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
