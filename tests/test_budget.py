"""Budget rows (s1's budget forcing) beside vector rows: every token a row chooses itself is checked against
an independent uncached forward over the prompt and everything the row fed before it (insertions
included); every insertion starts where the model's own choice was to end; the baseline is unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import random_vector
from helpers import collect

from steer_ui.engine.budget import Budget
from steer_ui.engine.dynamics import dynamics, leading_choice
from steer_ui.engine.events import InterveneEvent
from steer_ui.engine.knobs import parse_row
from steer_ui.engine.run_settings import RunSettings, SteeredRow
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.model.loading import load_model


def _events(lm, settings):
    from steer_ui.engine.decode import run

    return list(run(lm, settings))


def _reference_logits(lm, ids, steer=None):
    """Next-token logits at every position of ``ids`` from one uncached forward; ``steer``: (layer ->
    direction, coef, positions) added as a textbook hook, independently of the engine's steering."""
    handles = []
    if steer is not None:
        directions, coef, positions = steer
        mask = torch.zeros(len(ids), 1)
        mask[sorted(positions)] = 1.0
        for layer, vec in directions.items():
            def hook(module, args, out, vec=vec):
                hidden = out[0] if isinstance(out, tuple) else out
                hidden = hidden + coef * mask * vec
                return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
            handles.append(lm.layers[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    finally:
        for h in handles:
            h.remove()


def _check_row(lm, start, events, row, end_ids, steer=None):
    """Each token the row chose itself is the reference's argmax (with the ends refused where an at-end
    row triggered); each extend or trigger sits where the reference's argmax was an end."""
    tokens = [e for e in events if getattr(e, "event", "") == "token" and e.row == row]
    notes = {e.step: e for e in events if isinstance(e, InterveneEvent) and e.row == row}
    ids = list(start.prompt_ids) + [t.token_id for t in tokens]
    n = len(start.prompt_ids)
    logits = _reference_logits(lm, ids, steer)
    for t in tokens:
        choice = logits[n - 1 + t.step]
        note = notes.get(t.step)
        if note is not None and note.kind in ("extend", "trigger"):
            assert int(choice.argmax()) in end_ids, f"row {row} step {t.step}: the model did not choose to end"
        if t.forced:
            continue
        if note is not None and note.kind == "trigger":
            choice = choice.clone()
            choice[sorted(end_ids)] = float("-inf")
        assert t.token_id == int(choice.argmax()), f"row {row} step {t.step}"
    return tokens, notes


def test_budget_min_on_the_bundled_model_feeds_wait_where_it_would_end(bundled):
    """No thinking block: end-of-sequence is the end, and every generated token counts."""
    budget_row = SteeredRow(None, budget=Budget.parse("budget:min=40"))
    s = RunSettings("What is 2+2? Answer briefly.", rows=(budget_row,), max_new_tokens=48, probe_every=8)
    events = _events(bundled, s)
    start, done = events[0], events[-1]
    end_ids = _eos(bundled)
    tokens, notes = _check_row(bundled, start, events, 1, end_ids)
    assert notes and all(n.kind == "extend" and n.text == "Wait" for n in notes.values())
    wait = bundled.tokenizer.encode("Wait", add_special_tokens=False)
    for step in notes:  # the wait text, whole and marked forced, where the model chose to end
        fed = [t for t in tokens if step <= t.step < step + len(wait)]
        assert [t.token_id for t in fed] == wait and all(t.forced for t in fed)
    assert sum(t.forced for t in tokens) == len(notes) * len(wait)
    base, row = done.rows
    assert base.finish_reason == "eos" and len(base.token_ids) < 40 and row.interventions == len(notes)
    assert min(notes) == len(base.token_ids)  # the first insertion is where the baseline ended
    # The baseline is the baseline alone.
    alone = collect(bundled, RunSettings(s.prompt, max_new_tokens=48, probe_every=8))[3]
    assert base.token_ids == alone.rows[0].token_ids
    # Dynamics recomputed from the row's readings.
    readings = [(p.step, p.logprobs) for p in events if getattr(p, "event", "") == "probe" and p.row == 1]
    assert row.dynamics == dynamics(readings, len(row.token_ids))
    _check_notebook_run(events, s, tokens, notes, row)


def _check_notebook_run(events, settings, tokens, notes, row) -> None:
    """The notebook's Run folds the same events: its frame marks forced tokens, interventions, the urge to
    stop and the row's dynamics; its figure draws the urge to stop for a budget run (and not when told)."""
    from steer_ui.api.result import Run

    run = Run(events, settings)
    mine = run.to_pandas().query("row == 1 and token_id.notna()")
    assert list(mine.step[mine.forced]) == [t.step for t in tokens if t.forced] == run.rows[1].forced
    assert dict(zip(mine.step[mine.intervention.notna()], mine.intervention.dropna())) == {
        k: n.kind for k, n in notes.items()}
    assert mine.stop_logprob.tolist() == pytest.approx([t.stop_logprob for t in tokens], abs=1e-3)
    assert set(mine.flips) == {row.dynamics.flips} and set(mine.settled_at) == {row.dynamics.settled_at}
    assert run.rows[1].dynamics["after_settle"] == row.dynamics.after_settle
    urge = [t for t in run.figure().data if t.yaxis == "y3"]
    assert [len(t.x) for t in urge] == [len(r.token_ids) for r in run.rows]
    assert list(urge[1].y) == pytest.approx([t.stop_logprob for t in tokens], abs=1e-3)
    assert not [t for t in run.figure(urge_to_stop=False).data if t.yaxis == "y3"]
    from steer_ui.api.display import panes_html

    assert panes_html(run).count("inserted by the budget") == sum(t.forced for t in tokens)


def _eos(lm):
    from steer_ui.engine.plan import eos_ids

    return eos_ids(lm)


@pytest.fixture(scope="module")
def closing_tiny(tiny_dirs):
    """The tiny llama with ``</think>`` made the likeliest token wherever its most frequent one was: a
    random model that wants to stop thinking after 6 tokens (a fresh copy: the shared one stays as built)."""
    import collections

    lm = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    base = collect(lm, RunSettings("Is seventeen prime?", max_new_tokens=40, probe_every=0))[3].rows[0]
    top = collections.Counter(base.token_ids).most_common(1)[0][0]
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    with torch.no_grad():
        weight = lm.model.get_output_embeddings().weight
        weight[close] = weight[top] * 1.02
    return lm


def test_budget_min_max_and_at_end_on_a_model_with_a_thinking_block(closing_tiny):
    lm = closing_tiny
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    vec = random_vector(lm, [1, 2], scale=4.0)
    rows = (SteeredRow(None, budget=Budget.parse("budget:min=20")),
            SteeredRow(None, budget=Budget.parse("budget:max=12,cue=So")),
            SteeredRow(vec, 3.0, (1, 2), Scope.parse("at-end:4")))
    s = RunSettings("Is seventeen prime?", rows=rows, max_new_tokens=40, probe_every=0)
    events = _events(lm, s)
    start, done = events[0], events[-1]
    ends = frozenset(_eos(lm)) | {close}
    base = done.rows[0]
    assert base.think_tokens < 12  # the baseline stops thinking early by itself
    # min: the think block stays open until 20 thinking tokens, with "Wait" where the model closed it.
    _, notes = _check_row(lm, start, events, 1, ends)
    assert notes and done.rows[1].think_tokens >= 20
    # max on a row that closes early by itself never fires: the row is the model's own choices throughout.
    _, capped = _check_row(lm, start, events, 2, ends)
    assert not capped and done.rows[2].think_tokens < 12
    # at-end: the vector, steered from each trigger for 4 tokens, where the ends were refused.
    n = len(start.prompt_ids)
    triggers = sorted(e.step for e in events if isinstance(e, InterveneEvent) and e.row == 3)
    assert triggers and all(e.kind == "trigger" for e in events if isinstance(e, InterveneEvent) and e.row == 3)
    steered_at = {n + i for t in triggers for i in range(t, t + 4)}  # fed tokens t..t+3 carry the vector
    _check_row(lm, start, events, 3, ends, steer=(dict(vec.directions), 3.0, steered_at))
    assert done.rows[3].think_tokens >= 20 or done.rows[3].finish_reason == "length"


def test_budget_max_closes_the_block_at_exactly_n_thinking_tokens(tiny):
    lm = tiny["llama"]  # a random model that never closes its think block by itself
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    s = RunSettings("Is seventeen prime?", rows=(SteeredRow(None, budget=Budget.parse("budget:max=10,cue=Yes")),),
                    max_new_tokens=24, probe_every=4)
    events = _events(lm, s)
    start, done = events[0], events[-1]
    row = done.rows[1]
    cue = lm.tokenizer.encode("Yes", add_special_tokens=False)
    assert row.token_ids[10:11 + len(cue)] == [close, *cue] and row.think_tokens == 10
    notes = [e for e in events if isinstance(e, InterveneEvent)]
    assert [(e.row, e.step, e.kind, e.text) for e in notes] == [(1, 10, "cap", "</think>Yes")]
    tokens, _ = _check_row(lm, start, events, 1, frozenset())
    assert [t.step for t in tokens if t.forced] == list(range(10, 11 + len(cue)))
    assert done.rows[0].think_tokens == len(done.rows[0].token_ids)  # the baseline never closed


def test_dynamics_follow_the_definitions():
    lp = lambda a, b: {"Yes": a, "No": b}  # noqa: E731
    assert leading_choice(lp(-1.0, -1.0)) == "Yes"  # a tie goes to the first choice
    d = dynamics([(0, lp(-1, -2)), (4, lp(-3, -1)), (8, lp(-2, -1)), (12, lp(-1, -3)), (16, lp(-1, -2))], 20)
    assert (d.flips, d.settled_at, d.after_settle, d.readings) == (2, 12, 8, 5)
    still = dynamics([(0, lp(-1, -2)), (4, lp(-1, -2))], 6)
    assert (still.flips, still.settled_at, still.after_settle) == (0, 0, 6)
    assert dynamics([], 5) is None


@pytest.mark.parametrize(("text", "message"), [
    ("budget:min=abc", "must be a whole number"),
    ("budget:min=300,max=100", "budget min (300) is more than its max (100)"),
    ("budget:", "cannot read budget"),
    ("budget:min=10,wait=", "wait text must be 1 to 64 characters"),
    ("budget:max=10,cue=" + "x" * 65, "cue text must be 1 to 64 characters"),
    ("budget:min=10,times=0", "of 1 or more"),
    ("budget:min=5,min=6", "cannot read budget"),
    ("confidence=4/at-end:0", "unknown scope"),
])
def test_bad_budgets_are_one_message_each(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_row(text)


def test_row_specs_read_and_write_back():
    for text in ["budget:min=200", "budget:min=200,wait=Hmm,times=2,max=900,cue=Answer:",
                 "confidence=4@12-15/think+budget:min=2000", "confidence=-2/at-end:32"]:
        assert str(parse_row(text)) == text
    both = parse_row("reconsideration=4@12-15/think+budget:min=2000")
    assert (both.vector, both.coef, both.budget.min_tokens, str(both.scope)) == ("reconsideration", 4.0, 2000, "think")


def test_budget_mistakes_against_the_model(bundled):
    from steer_ui.engine.plan import plan_run

    with pytest.raises(UserError, match="budget max=N closes a thinking block, and .* has none"):
        plan_run(bundled, RunSettings("Hi", rows=(SteeredRow(None, budget=Budget.parse("budget:max=10")),)))
    vec = random_vector(bundled, [10])
    with pytest.raises(UserError, match="at-end:K refuses ends where a budget:min row"):
        plan_run(bundled, RunSettings("Hi", rows=(SteeredRow(vec, 2.0, scope=Scope.parse("at-end:8")),)))
    with pytest.raises(UserError, match=r"row 2 \(at-end:8\+budget:min=5\): an at-end row follows the run's"):
        plan_run(bundled, RunSettings("Hi", rows=(SteeredRow(None, budget=Budget.parse("budget:min=5")),
                                                  SteeredRow(vec, 2.0, scope=Scope.parse("at-end:8"),
                                                             budget=Budget.parse("budget:min=5")))))


def test_a_budget_run_is_logged_replayed_and_exported_with_its_interventions(tiny, tmp_path):
    """A real SQLite file: forced flags, interventions, the urge to stop and the dynamics come back on replay,
    in the JSONL export and in the CSV streams table."""
    import csv
    import json

    from steer_ui.engine.decode import run
    from steer_ui.log.archive import export, record_events
    from steer_ui.log.recorder import RunRecorder
    from steer_ui.log.store import Store

    lm = tiny["llama"]
    s = RunSettings("Is seventeen prime?", rows=(SteeredRow(None, budget=Budget.parse("budget:max=6,cue=Yes")),),
                    max_new_tokens=12, probe_every=4)
    store = Store(str(tmp_path / "log.sqlite"))
    recorder = RunRecorder(store, store.new_session("cli", "test"), lm, s)
    events = []
    for event in run(lm, s):
        recorder(event)
        events.append(event)
    recorder.close()
    assert recorder.error is None
    record = store.run_record(store.get_run(recorder.run_id))
    replayed = list(record_events(record, lm.tokenizer))
    same = lambda evs: [e.to_dict() for e in evs if e.event in ("token", "intervene")]  # noqa: E731
    assert same(replayed) == same(events)
    assert replayed[-1].rows[1].dynamics == events[-1].rows[1].dynamics
    assert replayed[-1].rows[1].think_tokens == 6 and replayed[0].rows[1].budget == "budget:max=6,cue=Yes"
    out = export(store, tmp_path / "all.jsonl", "jsonl")[0]
    stream = json.loads(out.read_text().splitlines()[0])["streams"][1]
    assert stream["interventions"] == [{"step": 6, "kind": "cap", "text": "</think>Yes"}]
    cue = lm.tokenizer.encode("Yes", add_special_tokens=False)
    assert stream["forced"] == list(range(6, 7 + len(cue))) and len(stream["stop_logprobs"]) == 12
    assert stream["stop_logprobs"][6] <= 0 and stream["stop_logprobs"][7] is None  # none once the block closed
    streams_csv = [p for p in export(store, tmp_path / "all.csv", "csv") if p.name.endswith("_streams.csv")][0]
    with streams_csv.open() as f:
        row = list(csv.DictReader(f))[1]
    assert json.loads(row["interventions"])[0]["kind"] == "cap" and json.loads(row["dynamics"])["readings"] >= 1


def test_rollouts_refuse_rows_whose_budget_depends_on_their_history():
    """analyze --rollouts restarts a row from its text: a budget or an at-end row would count from zero."""
    from steer_ui.experiments.analysis import no_rollouts, rollout_values
    from steer_ui.vectors.vector import SteeringVector

    vec = SteeringVector({1: torch.ones(8)}, name="ones")
    assert no_rollouts(None) is None and no_rollouts(SteeredRow(vec, 2.0)) is None
    assert "its budget (budget:min=30)" in no_rollouts(SteeredRow(None, budget=Budget.parse("budget:min=30")))
    at_end = SteeredRow(vec, 2.0, scope=Scope.parse("at-end:8"))
    assert "its scope (at-end:8)" in no_rollouts(at_end)
    with pytest.raises(UserError, match="which its text does not carry"):
        rollout_values(None, "", None, None, 2, 8, RunSettings("x"), at_end)
