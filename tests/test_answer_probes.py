"""Answer probes: multi-token choices read in the fused forward, final readings, the gold answer.

Every reading is checked against an uncached forward over prompt + generated tokens + suffix + the
form's tokens, summed over each form's tokens and log-sum-exp'd over forms, written here separately.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import random_vector
from helpers import add_everywhere, collect

from steer_ui.engine.decode import run
from steer_ui.engine.events import ProbeEvent, TokenEvent
from steer_ui.engine.plan import plan_run
from steer_ui.engine.probe import ProbeSpec, Reading, build_choices, build_tree, read
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError

PROMPT = "What is 17 times 23? Think step by step."


def reference_logprobs(lm, ids: list[int], choices) -> dict[str, float]:
    """Each choice's log-probability after ``ids``: one uncached forward per form."""
    out = {}
    for c in choices:
        per_form = []
        for form in c.variants:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([ids + list(form)], device=lm.input_device),
                                  use_cache=False).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            per_form.append(sum(logp[len(ids) - 1 + k, t].item() for k, t in enumerate(form)))
        out[c.label] = torch.logsumexp(torch.tensor(per_form, dtype=torch.float64), dim=0).item()
    return out


def check_readings(lm, start, done, probes, suffix_of, rows=None):
    """Every probe event of ``rows`` equals the reference within 1e-3; returns how many were checked."""
    checked = 0
    for p in probes:
        if rows is not None and p.row not in rows:
            continue
        ids = start.prompt_ids + done.rows[p.row].token_ids[:p.step] + suffix_of(p)
        ref = reference_logprobs(lm, ids, start.probe_choices)
        for label, value in ref.items():
            assert p.logprobs[label] == pytest.approx(value, abs=1e-3), (p.row, p.step, label)
        labels = [c.label for c in start.probe_choices]
        assert p.logodds == pytest.approx(ref[labels[0]] - ref[labels[1]], abs=1e-3)
        checked += 1
    return checked


def test_shared_first_tokens_make_a_trie(bundled):
    # SmolLM2 writes numbers digit by digit: '391' and '392' share '3' '9' (and ' ' '3' '9').
    choices = build_choices(bundled.tokenizer, ("391", "392", "Paris"))
    tree = build_tree(choices)
    assert [len(v) for v in choices[0].variants] == [3, 4]
    # Fed nodes: '3', '3 9' and ' ', ' 3', ' 3 9', shared by both numbers; Paris is one token, fed nothing.
    assert tree.size == 5


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_multi_token_readings_equal_uncached_forward_on_the_bundled_model(bundled, cache):
    vec = random_vector(bundled, range(8, 16), scale=4.0)
    s = RunSettings(PROMPT, rows=steered(vec, (2.0,), scope=Scope("all")), max_new_tokens=9, probe_every=4,
                    probe_choices=("391", "392", "Paris"), cache=cache)
    start, _, probes, done = collect(bundled, s)
    assert [c["variants"] for c in start.to_dict()["probe"]["choices"]][0] == [[35, 41, 33], [216, 35, 41, 33]]
    suffix = lambda p: start.probe_suffix_ids  # noqa: E731 - SmolLM2 has no thinking block
    assert check_readings(bundled, start, done, probes, suffix, rows={0}) == 4  # steps 0, 4, 8 and 9 (final)
    with add_everywhere(bundled, {x: vec.directions[x] for x in range(8, 16)}, 2.0):
        assert check_readings(bundled, start, done, probes, suffix, rows={1}) == 4


def test_single_token_choices_keep_their_numbers_exactly(bundled):
    """The reading of one-token choices is the same arithmetic on the same values as before multi-token
    choices: log-sum-exp over the one-token ids of log-softmax (bit for bit)."""
    choices = build_choices(bundled.tokenizer, ("Yes", "No"))
    spec = ProbeSpec((1,), None, choices, 1, 0.1, build_tree(choices))
    assert spec.tree.size == 0
    logits = torch.randn(3, bundled.model.config.vocab_size) * 4
    logp = torch.log_softmax(logits, dim=-1)
    before = [torch.logsumexp(logp[:, list(c.token_ids)], dim=-1) for c in choices]
    readings: list[Reading] = read(logits, spec)
    for r, row in zip(readings, range(3)):
        assert r.logprobs["Yes"] == before[0][row].item()
        assert r.logprobs["No"] == before[1][row].item()
        assert r.logodds == before[0][row].item() - before[1][row].item()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_multi_token_readings_on_tiny_architectures(tiny, arch, cache):
    lm = tiny[arch]
    choices = ("quickly", "seventeen", "seven")
    built = build_choices(lm.tokenizer, choices)
    assert max(len(v) for v in built[0].variants) >= 3
    assert built[1].variants[0][0] == built[2].variants[0][0], "seventeen and seven share a first token"
    s = RunSettings("Is nine a prime number?", max_new_tokens=6, probe_every=3, probe_choices=choices,
                    cache=cache, ignore_eos=True)
    start, _, probes, done = collect(lm, s)
    close = list(plan_run(lm, s).probe.close_think_ids)  # the template leaves <think> open
    assert all(p.think_closed for p in probes)
    assert check_readings(lm, start, done, probes, lambda p: close) == 3  # steps 0, 3 and 6 (final)


def test_final_reading_where_a_row_ends_at_end_of_sequence(bundled):
    """The issue's example: one token then end-of-sequence. The chart gets a point where the row ended."""
    s = RunSettings("Is 9 a prime number? Answer Yes or No.", max_new_tokens=32, probe_every=4)
    start, tokens, probes, done = collect(bundled, s)
    assert done.rows[0].finish_reason == "eos" and len(done.rows[0].token_ids) < 4
    assert [(p.step, p.final) for p in probes] == [(0, False), (len(done.rows[0].token_ids), True)]
    check_readings(bundled, start, done, probes, lambda p: start.probe_suffix_ids)


def test_final_reading_on_stop_and_at_the_length_limit(bundled):
    vec = random_vector(bundled, range(8, 16), scale=4.0)
    cancel = threading.Event()
    s = RunSettings(PROMPT, rows=steered(vec, (2.0,)), max_new_tokens=64, probe_every=5,
                    probe_choices=("391", "392"))
    events = []
    for ev in run(bundled, s, cancel):
        events.append(ev)
        if isinstance(ev, TokenEvent) and ev.step == 6:
            cancel.set()
    start, done = events[0], events[-1]
    probes = [e for e in events if isinstance(e, ProbeEvent)]
    finals = [p for p in probes if p.final]
    assert {p.row for p in finals} == {0, 1}
    for p in finals:
        assert done.rows[p.row].finish_reason == "cancelled"
        assert p.step == len(done.rows[p.row].token_ids) == 7
    check_readings(bundled, start, done, [p for p in finals if p.row == 0], lambda p: start.probe_suffix_ids)

    # At the length limit, on the cadence: the cadence's reading is the final one (not read twice).
    s = RunSettings(PROMPT, max_new_tokens=8, probe_every=4, ignore_eos=True)
    probes = collect(bundled, s)[2]
    assert [(p.step, p.final) for p in probes] == [(0, False), (4, False), (8, True)]


def test_final_reading_repeats_a_reading_already_at_the_last_token(bundled):
    """A row that ends at end-of-sequence right after a cadence reading: that reading, marked final."""
    s = RunSettings("Is 9 a prime number? Answer Yes or No.", max_new_tokens=32, probe_every=1)
    probes = collect(bundled, s)[2]
    last = [p for p in probes if not p.final][-1]
    final, = [p for p in probes if p.final]
    assert (final.step, final.logodds, final.mass) == (last.step, last.logodds, last.mass)


def test_gold_answer_probability(bundled):
    s = RunSettings(PROMPT, max_new_tokens=8, probe_every=4, probe_gold="391", probe_choices=("392", "17"))
    start, _, probes, done = collect(bundled, s)
    assert [c.label for c in start.probe_choices] == ["391", "392", "17"]
    assert start.to_dict()["probe"]["gold"] == "391"
    check = probes[0]
    ref = reference_logprobs(bundled, start.prompt_ids + start.probe_suffix_ids, start.probe_choices)
    p_gold = torch.tensor(ref["391"], dtype=torch.float64).exp().item()
    assert check.logodds == pytest.approx(ref["391"] - torch.log1p(torch.tensor(-p_gold)).item(), abs=1e-3)
    assert all(p.reliable for p in probes), "P(gold) is the reading: a small one is a finding, not noise"
    # Without other choices the default Yes/No is left out: the gold answer alone is read.
    alone = plan_run(bundled, RunSettings(PROMPT, probe_gold="391")).probe
    assert [c.label for c in alone.choices] == ["391"] and alone.gold


@pytest.mark.parametrize("settings,message", [
    (dict(probe_choices=("Paris", " paris")), "must differ"),
    (dict(probe_choices=("Yes", "No"), probe_gold="1" * 40), "at most 32 tokens"),
    (dict(probe_choices=tuple(str(i) for i in range(8)), probe_gold="42"), "at most 8 answers"),
    (dict(probe_choices=("Yes",), probe_gold="   "), "gold answer must be 1 to 64 characters"),
])
def test_bad_probe_settings_are_one_message(bundled, settings, message):
    with pytest.raises(UserError, match=message):
        plan_run(bundled, RunSettings(PROMPT, **settings))
