"""End to end in a real browser: Playwright driving Debian's chromium against the dashboard on 127.0.0.1.

Screenshots of each stage go to $STEER_UI_SHOTS (default: the test's tmp folder); look at them after
UI changes. ``scripts/setup.sh --dev`` installs chromium and Playwright; set STEER_UI_SKIP_BROWSER=1 to
skip these tests on a machine without them (CI never does).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("STEER_UI_CHROMIUM", "/usr/bin/chromium")
if os.environ.get("STEER_UI_SKIP_BROWSER") == "1":
    pytest.skip("STEER_UI_SKIP_BROWSER=1", allow_module_level=True)

from helpers import wait_until  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
LONG = "Write a long story about a dragon who learns arithmetic."


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("STEER_UI_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM}: run scripts/setup.sh --dev (or set STEER_UI_SKIP_BROWSER=1)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, app_server) -> Page:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.goto(app_server[0])
    expect(pg.get_by_label("Prompt")).to_be_visible(timeout=60_000)
    yield pg
    context.close()


def fill_form(page: Page, prompt: str, vector: str, coefs: str, max_new_tokens: int) -> None:
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Steering vector").click()
    page.get_by_role("option", name=vector).click()
    expect(page.get_by_label("Layers", exact=True)).not_to_have_value("", timeout=60_000)  # the suggested band arrives
    page.get_by_label("Coefficients").fill(coefs)
    tokens = page.get_by_label("Max new tokens").and_(page.locator("input[type=number]"))
    tokens.fill(str(max_new_tokens))
    tokens.press("Enter")


def pane_lengths(page: Page) -> list[int]:
    return page.locator(".su-body").evaluate_all("els => els.map(e => e.textContent.length)")


def status(page: Page):
    return page.locator(".prose", has_text=re.compile(r"streaming|finished|stopped|Error"))


def above_the_fold(page: Page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"]


def test_the_first_screen_leads_then_the_run_takes_the_room(browser, app_server, shots: Path):
    """At 1440x900: the prompt, the vector, Generate/Stop and the first example without scrolling; no empty
    chart or downloads frame; after a run the examples close, the chart and downloads appear, and
    readings with too little mass on the choices are drawn faint, not as the solid line."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(app_server[0])
    expect(page.get_by_label("Prompt")).to_be_visible(timeout=60_000)
    first = page.locator("#su-examples tbody tr").first
    expect(first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(shots / "0-first-screen.png"))
    for control in (page.get_by_label("Prompt"), page.get_by_label("Steering vector"), first,
                    page.get_by_role("button", name="Generate", exact=True),
                    page.get_by_role("button", name="Stop", exact=True)):
        assert above_the_fold(page, control), control
    assert not page.locator(".su-chart-wrap").is_visible() and not page.get_by_text("Downloads").is_visible()

    first.click()  # the first example: reconsideration at +4 and +8
    expect(page.get_by_label("Layers", exact=True)).not_to_have_value("", timeout=60_000)
    tokens = page.get_by_label("Max new tokens").and_(page.locator("input[type=number]"))
    tokens.fill("32")
    tokens.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=120_000)
    expect(page.locator(".su-chart-wrap")).to_be_visible()
    expect(page.locator("a[download$='.jsonl']")).to_be_visible(timeout=30_000)
    expect(first).to_be_hidden()  # the examples closed: the streams moved up
    assert above_the_fold(page, page.locator(".su-pane").first)
    page.wait_for_function("() => document.querySelector('.su-chart').data?.length >= 9", timeout=60_000)
    traces = page.locator(".su-chart").evaluate(
        "d => d.data.filter(t => !t.yaxis).map(t => ({meta: t.meta ?? null, opacity: t.opacity ?? 1, y: t.y}))")
    solid, faint = traces[0::2], traces[1::2]
    assert [t["meta"] for t in faint] == ["readings"] * 3 and all(t["opacity"] < 0.5 for t in faint)
    assert all(t["opacity"] == 1 for t in solid)
    # The solid line leaves out what the faint one shows; some reading of this run is untrusted.
    for s, f in zip(solid, faint):
        assert all(a is None or a == b for a, b in zip(s["y"], f["y"], strict=True))
    assert any(a is None and b is not None for s, f in zip(solid, faint) for a, b in zip(s["y"], f["y"]))
    page.screenshot(path=str(shots / "0-first-run.png"))
    # Opened again by hand, the examples still close when the next run starts.
    link = page.get_by_text("Link to this run").text_content()
    tokens.fill("4")
    tokens.press("Enter")
    page.get_by_text("Examples", exact=True).first.click()
    expect(first).to_be_visible()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(first).to_be_hidden(timeout=2_000)  # at the click, not when the run ends
    expect(page.get_by_text("Link to this run")).not_to_have_text(link, timeout=120_000)
    expect(first).to_be_hidden()
    context.close()


def test_generate_streams_both_panes_and_the_chart_then_downloads(page: Page, shots: Path):
    fill_form(page, f"{XSS} Is 91 a prime number? Answer Yes or No.", "reconsideration", "4, 8", 48)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator(".su-pane")).to_have_count(3, timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('.su-body')].every(e => e.textContent.length > 0)",
                           timeout=60_000)
    page.screenshot(path=str(shots / "1-streaming.png"), full_page=True)
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=120_000)
    page.screenshot(path=str(shots / "2-finished.png"), full_page=True)

    assert all(n > 0 for n in pane_lengths(page))
    assert int(page.locator(".su-chart").get_attribute("data-points")) >= 3
    assert page.locator(".su-chart .main-svg").count() >= 1
    assert page.locator(".su-pane .su-meta").first.text_content().startswith("48 tokens") or \
        "finished" in page.locator(".su-pane .su-meta").first.text_content()
    run_id = re.search(r"\?run=(\w+)", page.get_by_text("Link to this run").text_content()).group(1)

    with page.expect_download() as dl:
        page.locator("a[download$='.jsonl']").click()
    record = json.loads(Path(dl.value.path()).read_text())
    assert record["id"] == run_id and record["status"] == "finished"
    assert [s["text"] for s in record["streams"]] == page.locator(".su-body").evaluate_all(
        "els => els.map(e => e.textContent)")

    # The HTML in the prompt stayed text everywhere: nothing ran, and History shows it literally.
    page.get_by_role("tab", name="History").click()
    expect(page.get_by_text("<img src=x", exact=False).filter(visible=True).first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(shots / "3-history.png"), full_page=True)
    # The run's vector, coefficients, layers and tokens per row, every column in view.
    row = page.get_by_role("row").filter(has_text=run_id).filter(visible=True).first
    cells = row.get_by_role("gridcell")
    texts = [t.strip() for t in cells.all_inner_texts()]
    assert texts[4:7] == ["reconsideration", "+4, +8", "15-18"] and re.fullmatch(r"\d+(/\d+)*", texts[7]), texts
    assert all(above_the_fold(page, cell) and cell.bounding_box()["x"] + cell.bounding_box()["width"] <= 1440
               for cell in cells.all())
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("img[src='x']").count() == 0

    # The browser keeps its session: after a reload, History still lists the run.
    live = page.locator(".su-body").evaluate_all("els => els.map(e => e.textContent)")
    page.reload()
    page.get_by_role("tab", name="History").click()
    expect(page.get_by_text(run_id).filter(visible=True).first).to_be_visible(timeout=60_000)

    # Clicking the run in the table opens it on the Generate tab, exactly as it streamed.
    page.get_by_text(run_id).filter(visible=True).first.click()
    expect(page.get_by_text(re.compile(rf"Run {run_id} from"))).to_be_visible(timeout=60_000)
    assert page.locator(".su-body").evaluate_all("els => els.map(e => e.textContent)") == live
    with page.expect_download() as dl:
        page.get_by_role("tab", name="History").click()
        page.get_by_role("button", name="Export session (JSONL)").click()
        page.locator("a[download$='.jsonl']").filter(visible=True).first.click()
    assert json.loads(Path(dl.value.path()).read_text().splitlines()[0])["id"] == run_id


def test_stop_ends_the_run_and_the_chart_keeps_its_zoom(page: Page, shots: Path, app_server):
    fill_form(page, LONG, "verbosity", "6", 1500)
    page.get_by_role("button", name="Generate", exact=True).click()
    chart = page.locator(".su-chart")
    page.wait_for_function("() => +document.querySelector('.su-chart').dataset.points >= 4", timeout=60_000)
    # Zoom in, and mark the plot element: neither may change while points keep arriving.
    chart.evaluate("el => { el.__mark = 42; return window.Plotly.relayout(el, {'xaxis.range': [0, 6]}); }")
    before = int(chart.get_attribute("data-points"))
    page.wait_for_function(f"() => +document.querySelector('.su-chart').dataset.points >= {before + 4}",
                           timeout=60_000)
    assert chart.evaluate("el => el.__mark") == 42
    assert chart.evaluate("el => el._fullLayout.xaxis.range") == [0, 6]
    # A browser that misses many updates in a row (a busy or hidden tab) notices the gap and refetches.
    calls = []
    tab = app_server[1].generate
    original = tab.snapshot
    tab.snapshot = lambda key: calls.append(key) or original(key)
    page.evaluate("() => { window.__suSkipUpdates = 25; }")
    page.wait_for_function("() => window.__suSkipUpdates === 0", timeout=60_000)
    wait_until(lambda: calls)  # the gap was seen and filled from the server
    del tab.snapshot

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.get_by_text(re.compile(r"^stopped:"))).to_be_visible(timeout=60_000)
    wait_until(lambda: not app_server[1].ctx.active and not app_server[1].ctx.model_lock.locked())
    lengths = pane_lengths(page)
    page.wait_for_timeout(1000)
    assert pane_lengths(page) == lengths  # nothing arrives after Stop
    assert all("stopped" in t for t in page.locator(".su-meta").all_text_contents())
    run_id = re.search(r"\?run=(\w+)", page.get_by_text("Link to this run").text_content()).group(1)
    stored = app_server[1].ctx.store.get_run(run_id)
    assert page.locator(".su-body").evaluate_all("els => els.map(e => e.textContent)") == [
        s.text for s in stored.streams]  # every token, the missed ones included
    probes = app_server[1].ctx.store.probe_points(run_id)
    assert int(chart.get_attribute("data-points")) == len(probes)
    page.screenshot(path=str(shots / "4-stopped.png"), full_page=True)
    assert not app_server[1].ctx.model_lock.locked()


def test_a_run_link_reopens_it_and_model_html_is_shown_as_text(page: Page, app_server, tmp_path, shots):
    from steer_ui.log.archive import export, import_jsonl

    dash = app_server[1]
    store = dash.ctx.store
    source = store.list_runs(limit=1)
    if not source:  # this test alone: make a run to copy
        list(dash.generate.generate(prompt="Is 2 even?", max_new_tokens=4, browser_id="seed"))
        source = store.list_runs(limit=1)
    (path,) = export(store, tmp_path / "one.jsonl", "jsonl", run_id=source[0].id)
    record = json.loads(path.read_text())
    record["id"] = "htmlrun0001"
    for s in record["streams"]:
        s["text"] = f"Model says {XSS} and <b>bold</b>"
    path.write_text(json.dumps(record) + "\n")
    import_jsonl(store, path)

    page.goto(app_server[0] + "?run=htmlrun0001")
    body = page.locator(".su-body").first
    expect(body).to_contain_text("<script>window.__pwned=2</script>", timeout=60_000)
    assert page.locator(".su-body img, .su-body b, .su-body script").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    expect(page.get_by_text("htmlrun0001").filter(visible=True).first).to_be_visible()
    page.screenshot(path=str(shots / "5-linked-run.png"), full_page=True)


def test_a_2000_token_run_streams_every_token_at_a_bounded_update_rate(browser, tmp_path, shots):
    """A tiny random model decodes far faster than a browser should repaint: updates stay <= 20 a second."""
    import time

    from conftest import random_vector, serve_dashboard
    from tiny import build_tiny_model

    from steer_ui.model.loading import load_model
    from steer_ui.vectors.files import save_vector

    lm = load_model(str(build_tiny_model("llama", tmp_path / "llama", max_positions=4096)), device="cpu",
                    dtype="float32")
    vec = save_vector(random_vector(lm, range(lm.n_layers), scale=4.0), tmp_path / "random.safetensors")
    demo, url, dash = serve_dashboard(lm, tmp_path)
    try:
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.goto(url)
        page.get_by_label("Prompt").fill("Count to a thousand.")
        page.get_by_text("Upload a vector file").click()
        page.locator("input[type=file]").first.set_input_files(str(vec))
        expect(page.get_by_label("Steering vector")).to_have_value("uploaded or computed file", timeout=60_000)
        page.get_by_label("Layers", exact=True).fill("1-2")
        page.get_by_label("Coefficients").fill("8")
        tokens = page.get_by_label("Max new tokens").and_(page.locator("input[type=number]"))
        tokens.fill("2000")
        tokens.press("Enter")
        page.get_by_text("Decoding").click()
        page.get_by_label("Keep generating past end-of-sequence").check()
        started = time.monotonic()
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=300_000)
        elapsed = time.monotonic() - started
        page.wait_for_function("() => [...document.querySelectorAll('.su-body')].every(e => e.children.length >= 2000)",
                               timeout=60_000)
        spans = page.locator(".su-body").evaluate_all("els => els.map(e => e.children.length)")
        assert spans == [2000, 2000]
        updates = int(page.locator(".su-streams").locator("xpath=..").get_attribute("data-updates"))
        assert 2 <= updates <= 20 * elapsed + 5
        assert int(page.locator(".su-chart").get_attribute("data-points")) == 2 * (2000 // 4 + 1)
        page.screenshot(path=str(shots / "6-2000-tokens.png"), full_page=True)
        context.close()
    finally:
        demo.close()


def generate_with_rows(page: Page, prompt: str, rows: str, max_new_tokens: int) -> list[str]:
    """Generate with the reconsideration preset at +4 and ``rows`` in the rows box; the panes' titles."""
    fill_form(page, prompt, "reconsideration", "4", max_new_tokens)
    page.get_by_label("Rows with their own vector").fill(rows)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=120_000)
    return page.locator(".su-head > span:first-child").all_text_contents()


def test_rows_with_their_own_vectors_stream_side_by_side(page: Page, shots: Path):
    titles = generate_with_rows(page, "Is 17 x 23 greater than 400? Answer Yes or No.",
                                "confidence=-6@16-19\nverbosity=6@16-19", 12)
    assert titles == ["Baseline", "reconsideration +4 @15-18", "confidence -6 @16-19", "verbosity +6 @16-19"]
    assert all(n > 0 for n in pane_lengths(page))
    page.screenshot(path=str(shots / "8-rows.png"), full_page=True)


def test_a_budget_row_shows_its_inserted_wait_marked_in_its_pane(page: Page, shots: Path, app_server):
    """budget:min=N beside a vector row: where the model chose to end, "Wait" is fed, marked as not its own;
    the chart's strip below draws each row's urge to stop, a point per token, as streamed."""
    titles = generate_with_rows(page, "What is 2+2? Answer briefly.", "budget:min=30", 40)
    assert titles[0] == "Baseline" and titles[-1] == "budget:min=30"
    budget_pane = page.locator(".su-body").last
    marked = budget_pane.locator("span.f")
    assert marked.count() >= 1 and "Wait" in "".join(marked.all_text_contents())
    assert "inserted by the budget" in marked.first.get_attribute("title")
    assert page.locator(".su-body").first.locator("span.f").count() == 0  # the baseline has none
    store = app_server[1].ctx.store
    run = store.run_record(store.get_run(store.list_runs(limit=1)[0].id))
    want = [len(st["token_ids"]) for st in run["streams"]]
    urge = "() => (document.querySelector('.su-chart').data || []).filter(t => t.yaxis === 'y3').map(t => t.x.length)"
    page.wait_for_function(f"() => JSON.stringify(({urge})()) === '{json.dumps(want, separators=(',', ':'))}'",
                           timeout=30_000)
    page.screenshot(path=str(shots / "9-budget.png"), full_page=True)


def test_the_sweep_tab_shows_its_table_and_figure(page: Page, shots: Path):
    # The Generate form is the sweep's template: its vector, layers and max new tokens.
    fill_form(page, "(the questions replace the prompt)", "reconsideration", "", 8)
    page.get_by_role("tab", name="Sweep").click()
    page.get_by_label("Questions").fill("yesno:2")
    page.get_by_label("Sweep coefficients").fill("0, 4")
    page.get_by_label("Arms").fill("budget:min=12")
    page.get_by_role("button", name="Run sweep").click()
    expect(page.get_by_text(re.compile(r"^finished: 2 questions x 3 arms"))).to_be_visible(timeout=120_000)
    table = page.get_by_label("Summary")
    for arm in ("baseline", "coef +4", "budget:min=12"):
        expect(table.get_by_text(arm, exact=True).filter(visible=True).first).to_be_visible()
    expect(table.get_by_text("McNemar p").filter(visible=True).first).to_be_visible()
    expect(page.locator(".js-plotly-plot").filter(visible=True)).to_have_count(2, timeout=60_000)  # Pareto + per coef
    page.screenshot(path=str(shots / "7-sweep.png"), full_page=True)


def test_closing_the_tab_stops_the_run_and_frees_the_model(browser, app_server):
    url, dash = app_server
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.get_by_label("Prompt").fill(LONG)
    tokens = page.get_by_label("Max new tokens").and_(page.locator("input[type=number]"))
    tokens.fill("1500")
    tokens.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("() => (document.querySelector('.su-body') || {textContent: ''}).textContent.length > 10",
                           timeout=60_000)
    context.close()
    wait_until(lambda: not dash.ctx.model_lock.locked() and not dash.ctx.active)
    latest = dash.ctx.store.list_runs(limit=1)[0]
    assert latest.status == "cancelled" and 0 < latest.tokens < 1500


def test_train_a_vector_in_the_browser_then_generate_with_it(page: Page, shots: Path):
    data = Path(__file__).resolve().parents[1] / "assets" / "examples" / "in-short.jsonl"
    page.get_by_text("Train a vector from examples").click()
    page.get_by_label("Examples (JSONL)").fill("\n".join(data.read_text().splitlines()[:8]))
    page.get_by_label("Layers to train").fill("12-13")
    expect(page.get_by_label("Learning rate")).to_have_value("0.05")  # the defaults, shown
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("6")
    steps.press("Tab")
    page.get_by_role("button", name="Train vector").click()
    expect(page.get_by_text(re.compile(r"^Trained \("))).to_be_visible(timeout=240_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    expect(page.get_by_label("Steering vector")).to_have_value("uploaded or computed file")
    expect(page.get_by_label("Layers", exact=True)).to_have_value("12-13")
    page.screenshot(path=str(shots / "train.png"), full_page=True)
    page.get_by_label("Prompt").fill("What is 2 + 2?")
    page.get_by_label("Coefficients").fill("1")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=120_000)


def test_a_gold_answer_and_multi_token_choices_with_final_readings(page: Page, shots: Path):
    fill_form(page, "What is 17 times 23? Think step by step.", "reconsideration", "4", 10)
    page.get_by_text("Probe", exact=True).click()
    # The accordion mounts its fields as it opens: wait for them before typing, or a keystroke can be lost.
    gold, choices = page.get_by_label("Gold answer"), page.get_by_label("Probe choices (first is positive)")
    expect(gold).to_be_editable(timeout=60_000)
    page.wait_for_timeout(500)
    for box, text in ((gold, "391"), (choices, "392,17")):
        box.fill(text)
        box.press("Tab")
        expect(box).to_have_value(text)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^finished:"))).to_be_visible(timeout=120_000)
    page.wait_for_function("() => document.querySelector('.su-chart').data?.length >= 4", timeout=60_000)
    chart = page.locator(".su-chart").evaluate(
        "d => ({title: d.layout.yaxis.title.text, symbols: d.data.filter(t => !t.yaxis).map(t => t.marker.symbol),"
        "       xs: d.data.filter(t => !t.yaxis).map(t => t.x)})")
    assert chart["title"] == "log-odds of the gold answer 391"
    # Each row's series ends with a diamond: its reading where the row ended (10 tokens, the length limit).
    for symbols, xs in zip(chart["symbols"], chart["xs"]):
        assert symbols[-1].startswith("diamond") and xs[-1] == 10
        assert not any(s.startswith("diamond") for s in symbols[:-2])
    page.screenshot(path=str(shots / "10-gold.png"), full_page=True)
    # Nine choices: one clear message, and nothing runs.
    choices.fill("1,2,3,4,5,6,7,8,9")
    choices.press("Tab")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile("at most 8 choices")).first).to_be_visible(timeout=60_000)
