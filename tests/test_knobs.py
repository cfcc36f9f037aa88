"""The knob declaration (steer_ui.engine.knobs): the one place a run knob's name, default, range and text
form live, and what the settings, forms, CLI and widgets derive from it."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

import pytest
import torch

import steer_ui.cli.options
import steer_ui.engine.knobs
from steer_ui.engine.knobs import (
    BY_NAME,
    KNOBS,
    STEERING,
    Knob,
    RowSpec,
    format_rows,
    parse_coefs,
    parse_row,
    parse_rows,
)
from steer_ui.engine.run_settings import RunSettings, SteeredRow, form_from_settings, settings_from_form, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.vectors.layers import parse_layers
from steer_ui.vectors.vector import SteeringVector


def _vector(name: str) -> SteeringVector:
    g = torch.Generator().manual_seed(len(name))
    return SteeringVector({x: torch.randn(8, generator=g) for x in range(30)}, name=name)


@pytest.fixture
def vectors() -> dict[str, SteeringVector]:
    return {n: _vector(n) for n in ("confidence", "reconsideration", "verbosity", "mine.safetensors")}


def _resolver(vectors: dict[str, SteeringVector]):
    def resolve(name: str) -> SteeringVector:
        return vectors[name]
    return resolve


def _text(knob: Knob, value) -> object:
    """A value as a widget shows it ('' for None)."""
    return "" if value is None else knob.shown(value)


# --- one declaration ----------------------------------------------------------------------------------
def test_every_run_setting_is_a_knob_of_the_same_name_and_default():
    names = [f.name for f in fields(RunSettings)]
    for f in fields(RunSettings):
        if f.name == "rows":
            continue
        assert f.name in BY_NAME, f.name
        if f.default is MISSING:  # the prompt: required in the settings, the knob and the CLI
            assert f.default_factory is MISSING and BY_NAME[f.name].required
        else:
            assert f.default == BY_NAME[f.name].default, f.name
    # And every knob is a setting, or one of the steering knobs that become rows.
    assert {k.name for k in KNOBS} - (set(names) - {"rows"}) == set(STEERING)
    assert len(BY_NAME) == len(KNOBS), "knob names are unique"


def test_knob_checks_say_what_and_the_range():
    with pytest.raises(UserError, match=r"^max new tokens must be >= 1, got 0$"):
        BY_NAME["max_new_tokens"].check(0)
    with pytest.raises(UserError, match=r"^top-p must be in \(0, 1\], got 2.0$"):
        BY_NAME["top_p"].check(2.0)
    with pytest.raises(UserError, match=r"^top-p must be in \(0, 1\], got 0$"):
        BY_NAME["top_p"].check(0)
    BY_NAME["top_p"].check(1.0)
    with pytest.raises(UserError, match=r"^max new tokens must be a whole number, got '1.5'$"):
        BY_NAME["max_new_tokens"].read("1.5")
    with pytest.raises(UserError, match=r"^unknown cache 'paged': use dynamic or static$"):
        BY_NAME["cache"].read("paged")
    assert BY_NAME["max_new_tokens"].read("16") == 16 and BY_NAME["temperature"].read("0.5") == 0.5
    assert BY_NAME["ignore_eos"].read("yes") is True and BY_NAME["ignore_eos"].read(None) is False


# --- forms --------------------------------------------------------------------------------------------
def test_settings_from_text_form(vectors):
    form = {"prompt": "Is 9 prime?", "vector": "confidence", "layers": "15-18", "coefs": "4, 8", "scope": "kick:8",
            "rows": "reconsideration=-6@12-15\nverbosity=2", "max_new_tokens": "16", "temperature": "0.5",
            "top_p": "0.9", "probe_choices": "Yes, No", "system_prompt": "  ", "chat_template": False}
    s = settings_from_form(form, _resolver(vectors))
    kick, band = Scope("kick", 8), (15, 16, 17, 18)
    assert s.rows == (SteeredRow(vectors["confidence"], 4.0, band, kick),
                      SteeredRow(vectors["confidence"], 8.0, band, kick),
                      SteeredRow(vectors["reconsideration"], -6.0, (12, 13, 14, 15), kick),
                      SteeredRow(vectors["verbosity"], 2.0, band, kick))  # the form's layers unless it names its own
    assert (s.max_new_tokens, s.temperature, s.top_p, s.probe_choices) == (16, 0.5, 0.9, ("Yes", "No"))
    assert s.system_prompt is None and s.chat_template is False
    assert (s.top_k, s.probe_every, s.cache) == (0, 4, "dynamic")  # missing knobs take their defaults
    # Rows alone, no --vector; a row's own layers; 'all' for every layer of the vector.
    s = settings_from_form({"prompt": "x", "rows": "confidence=-6@12-15; verbosity=1", "layers": "all"},
                           _resolver(vectors))
    assert [(r.vector.name, r.coef, r.layers, str(r.scope)) for r in s.rows] == \
        [("confidence", -6.0, (12, 13, 14, 15), "all"), ("verbosity", 1.0, None, "all")]


@pytest.mark.parametrize("field,value,message", [
    ("max_new_tokens", "0", r"max new tokens must be >= 1, got 0"),
    ("top_p", "2", r"top-p must be in \(0, 1\], got 2.0"),
    ("coefs", "4, x", r"coefficient 'x' is not a number"),
    ("layers", "ten", r"cannot read layers 'ten'"),
    ("scope", "everywhere", r"unknown scope 'everywhere'"),
    ("rows", "confidence", r"cannot read row 'confidence'"),
])
def test_a_bad_form_value_is_one_clear_error(vectors, field, value, message):
    form = {"prompt": "x", "vector": "confidence", "coefs": "4", field: value}
    with pytest.raises(UserError, match=message):
        settings_from_form(form, _resolver(vectors))


def test_coefficients_need_a_vector(vectors):
    with pytest.raises(UserError, match="need a steering vector"):
        settings_from_form({"prompt": "x", "coefs": "4"}, _resolver(vectors))


def test_form_from_settings_round_trips(vectors):
    conf, recon, mine = vectors["confidence"], vectors["reconsideration"], vectors["mine.safetensors"]
    by_name = _resolver(vectors)
    cases = [
        RunSettings("Is 9 prime?"),
        RunSettings("Is 9 prime?", system_prompt="Be brief.", chat_template=False, max_new_tokens=32,
                    ignore_eos=True, cache="static", temperature=0.7, top_p=0.9, top_k=40, seed=3,
                    probe_suffix=" So", probe_choices=("True", "False", "Unsure"), probe_every=2, probe_min_mass=0.25,
                    rows=steered(conf, (4, -8.5), (15, 16, 17, 18), "kick:8")),
        RunSettings("Is 9 prime?", rows=steered(conf, (4,))  # every layer of the vector
                    + (SteeredRow(recon, -6, (12, 13, 14, 15)), SteeredRow(mine, 0.5, (3, 5, 7)))),
        # Rows keep their order: a row like the first after another vector's is not moved up to it.
        RunSettings("Is 9 prime?", rows=(SteeredRow(recon, 2, (12, 13)), SteeredRow(conf, 4, (12, 13)),
                                         SteeredRow(recon, 3, (12, 13)))),
        # A row's own scope, and a coefficient with more digits than %g keeps.
        RunSettings("Is 9 prime?", rows=(SteeredRow(recon, 1 / 3, (12, 13), Scope("generated")),
                                         SteeredRow(conf, -4, (12, 13), Scope("kick", 16)))),
    ]
    for settings in cases:
        form = form_from_settings(settings)
        assert set(form) == set(BY_NAME)
        back = settings_from_form(form, by_name)
        assert back.to_dict() == settings.to_dict()
        assert [r.vector for r in back.rows] == [r.vector for r in settings.rows]  # the same objects
    form = form_from_settings(cases[2])
    assert (form["vector"], form["coefs"], form["rows"]) == \
        ("confidence", "4", "reconsideration=-6@12-15\nmine.safetensors=0.5@3,5,7")
    assert (form_from_settings(cases[3])["coefs"], form_from_settings(cases[3])["rows"]) == \
        ("2", "confidence=4@12-13\nreconsideration=3@12-13")
    assert (form_from_settings(cases[4])["coefs"], form_from_settings(cases[4])["scope"],
            form_from_settings(cases[4])["rows"]) == ("0.3333333333333333", "generated", "confidence=-4@12-13/kick:16")


def test_a_row_on_all_its_vector_layers_keeps_them_in_the_form(vectors):
    """``--row confidence=4@12-15 --row verbosity=2`` (no --layers): the second row steers every layer of
    its vector, and the form that gives the run back must say so, not leave it to the form's 12-15."""
    conf, verb = vectors["confidence"], vectors["verbosity"]
    settings = settings_from_form({"prompt": "x", "rows": "confidence=4@12-15\nverbosity=2"}, _resolver(vectors))
    assert [r.layers for r in settings.rows] == [(12, 13, 14, 15), None]
    back = settings_from_form(form_from_settings(settings), _resolver(vectors))
    assert [(r.vector, r.coef, r.scope) for r in back.rows] == [(conf, 4.0, Scope()), (verb, 2.0, Scope())]
    assert [r.layers for r in back.rows] == [(12, 13, 14, 15), tuple(verb.layers)]


def test_legacy_settings_dict_becomes_rows():
    """Runs logged before rows had vectors of their own: one vector, its layers, coefficients and scope."""
    vec = _vector("confidence.safetensors")
    legacy = {"prompt": "Is 9 prime?", "system": "Be brief.", "raw": True, "vector_name": "confidence.safetensors",
              "layers": [12, 13], "coefs": [4.0, -6.0], "scope": "kick:8", "max_new_tokens": 16, "ignore_eos": True,
              "cache": "static", "sampling": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3},
              "probe": {"suffix": " So", "choices": ["Yes", "No"], "every": 2, "min_mass": 0.2}}
    s = RunSettings.from_dict(legacy, vectors={vec.content_hash(): vec})
    want = RunSettings("Is 9 prime?", system_prompt="Be brief.", chat_template=False,
                       rows=steered(vec, (4.0, -6.0), (12, 13), Scope("kick", 8)), max_new_tokens=16, ignore_eos=True,
                       cache="static", temperature=0.7, top_p=0.9, top_k=40, seed=3, probe_suffix=" So",
                       probe_choices=("Yes", "No"), probe_every=2, probe_min_mass=0.2)
    assert s == want  # rows compare their vectors by identity: the stored copy itself
    unsteered = RunSettings.from_dict({"prompt": "hi", "system": None, "raw": False, "vector_name": None,
                                       "layers": None, "coefs": [], "scope": "all", "max_new_tokens": 8,
                                       "sampling": {}, "probe": {"every": 0}})
    assert unsteered == RunSettings("hi", max_new_tokens=8, probe_every=0)
    # And today's dict reads back the same settings.
    assert RunSettings.from_dict(want.to_dict(), {vec.content_hash(): vec}) == want
    with pytest.raises(UserError, match="stored settings are incomplete"):
        RunSettings.from_dict(want.to_dict(), {})


# --- text forms ---------------------------------------------------------------------------------------
def test_rows_and_coefficients_as_text():
    rows = (RowSpec("confidence", -6.0, (12, 13, 14, 15)), RowSpec("reconsideration", 4.0),
            RowSpec("/tmp/my vectors/v.gguf", 0.5, (3, 5, 7)))
    assert format_rows(rows) == "confidence=-6@12-15\nreconsideration=4\n/tmp/my vectors/v.gguf=0.5@3,5,7"
    assert parse_rows(format_rows(rows)) == rows
    assert parse_rows("confidence=-6@12-15; reconsideration = 4") == rows[:2]  # ';' or lines; a comma is a layer list
    assert parse_row(" confidence = -6 @ 12-15 ") == rows[0]
    assert parse_row("confidence=-6@12-15/kick:8") == RowSpec("confidence", -6.0, (12, 13, 14, 15), Scope("kick", 8))
    assert parse_row("/tmp/v.gguf=1/generated") == RowSpec("/tmp/v.gguf", 1.0, None, Scope("generated"))
    assert str(RowSpec("v", 0.1 + 0.2, None, Scope("answer"))) == "v=0.30000000000000004/answer"
    with pytest.raises(UserError, match="unknown scope 'sideways'"):
        parse_row("confidence=-6/sideways")
    assert parse_rows("") == () and parse_rows(None) == ()
    with pytest.raises(UserError, match=r"cannot read row 'confidence': write VECTOR=COEF"):
        parse_row("confidence")
    with pytest.raises(UserError, match=r"row 'a=1,2' needs exactly one coefficient"):
        parse_row("a=1,2")
    with pytest.raises(UserError, match=r"coefficient 'x' is not a number"):
        parse_row("a=x")
    assert parse_coefs("4, 8;-6") == (4.0, 8.0, -6.0) and parse_coefs(2) == (2.0,) and parse_coefs(None) == ()
    with pytest.raises(UserError, match="not a finite number"):
        parse_coefs("inf")


def test_huge_layer_ranges_are_refused_before_they_are_built():
    """'0-30000000' is checked against the largest possible layer index before ``range`` is expanded
    (building it would take seconds and hundreds of MB); no timing is asserted, a shared CI machine is
    too noisy for that, but the message shows it is the bound check that refused it."""
    with pytest.raises(UserError, match="layer 30000000 is out of range"):
        parse_layers("0-30000000")
    with pytest.raises(UserError, match="layer 30000000 is out of range"):
        parse_rows("confidence=4@0-30000000")
    with pytest.raises(UserError, match=r"cannot read layers"):
        parse_layers("0-" + "9" * 40)  # more digits than any layer number: not even converted to an int


# --- what derives from the knobs: CLI options, widgets ------------------------------------------------
def _generate_parser() -> argparse.ArgumentParser:
    from steer_ui.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_cli_has_one_option_per_knob_with_its_default():
    from steer_ui.cli import build_parser

    generate = _generate_parser()
    for knob in KNOBS:
        options = [a for a in generate._actions if a.dest == knob.name]
        assert len(options) == 1, knob.name
        assert options[0].option_strings == [knob.cli_flag]
    args = build_parser().parse_args(["generate", "--prompt", "x"])
    for knob in KNOBS:
        if knob.repeat:
            assert getattr(args, knob.name) is None  # nothing given: the knob reads None as its default
            assert knob.read(getattr(args, knob.name)) == knob.default
        elif knob.name != "prompt":
            assert getattr(args, knob.name) == knob.default, knob.name
    assert args.prompt == "x"
    assert build_parser().parse_args(["generate", "--prompt", "x", "--raw"]).chat_template is False


def test_each_knob_has_a_widget_with_its_label_and_default():
    pytest.importorskip("gradio")
    from steer_ui.app.form import knob_widget

    for knob in KNOBS:
        widget = knob_widget(knob)
        assert widget.label == knob.label, knob.name
        if knob.required:  # the prompt: no default in the widget, so an API client must give one
            assert widget.value is None, knob.name
            continue
        assert widget.value == _text(knob, knob.default), knob.name
        assert knob.read(widget.value) == knob.default, knob.name  # the widget's text reads back as the default


def test_adding_a_knob_gives_the_cli_option(monkeypatch):
    """A new knob appended to KNOBS is a CLI option, with its default and help, collected by name. (A run
    setting also needs its RunSettings field; the CLI needs nothing more.)"""
    extra = Knob("repetition_penalty", 1.0, "Repetition penalty", "divide repeated tokens' logits by this",
                 kind="float", lo=1.0)
    knobs = (*KNOBS, extra)
    monkeypatch.setattr(steer_ui.engine.knobs, "KNOBS", knobs)
    monkeypatch.setattr(steer_ui.cli.options, "KNOBS", knobs)  # imported by name
    parser = argparse.ArgumentParser()
    steer_ui.cli.options.add_knobs(parser)
    assert "--repetition-penalty" in parser.format_help() and "divide repeated tokens" in parser.format_help()
    form = steer_ui.cli.options.form_from_args(parser.parse_args(["--prompt", "x", "--repetition-penalty", "1.3"]))
    assert form["repetition_penalty"] == "1.3" and extra.read(form["repetition_penalty"]) == 1.3
    assert steer_ui.cli.options.form_from_args(parser.parse_args(["--prompt", "x"]))["repetition_penalty"] == 1.0
    with pytest.raises(UserError, match=r"repetition penalty must be a finite number >= 1, got 0.5"):
        extra.check(extra.read("0.5"))
