"""A repeng control vector, read from its own GGUF export, steers exactly as repeng's ControlModel does."""

from __future__ import annotations

import numpy
import pytest
from helpers import collect, generate_greedy, our_hooks

from steer_ui.engine.plan import eos_ids
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope
from steer_ui.vectors.files import load_vector

numpy.float_ = numpy.float64  # repeng 0.4 still names the alias NumPy 2 removed
repeng = pytest.importorskip("repeng")

LAYERS = list(range(6, 18))


@pytest.mark.parametrize("coef", [1.5, -1.5])
def test_greedy_tokens_match_repeng_control_model(bundled, tmp_path, coef):
    rng = numpy.random.default_rng(3)
    directions = {}
    for layer in LAYERS:
        v = rng.standard_normal(bundled.hidden_size).astype(numpy.float32)
        directions[layer] = v / numpy.linalg.norm(v) * 3.0
    path = tmp_path / "vec.gguf"
    repeng.ControlVector(model_type="llama", directions=directions).export_gguf(str(path))

    vector = load_vector(path)
    assert vector.layers == LAYERS
    s = RunSettings("Should I check my answer twice? Answer yes or no.",
                    rows=steered(vector, (coef,), scope=Scope("all")), max_new_tokens=20, probe_every=4)
    start, _, _, done = collect(bundled, s)
    ours = done.rows[1].token_ids

    control = repeng.ControlModel(bundled.model, LAYERS)
    try:
        control.set_control(repeng.ControlVector.import_gguf(str(path)), coef)
        theirs = generate_greedy(bundled, start.prompt_ids, 20, eos_ids(bundled))
    finally:
        control.unwrap()
    assert ours == theirs
    assert ours != done.rows[0].token_ids, "the vector must change the output for this to mean anything"
    assert our_hooks(bundled) == 0
    assert not any(type(layer).__name__ == "ControlModule" for layer in bundled.layers)


def test_a_trained_vector_exported_as_gguf_steers_repeng_as_it_steers_here(bundled, tmp_path):
    """The shipped trained preset, written as GGUF, read by repeng's own importer: same greedy tokens."""
    from steer_ui.vectors.files import save_vector
    from steer_ui.vectors.presets import preset_vector_path

    trained = load_vector(preset_vector_path("in-short", "smollm2-135m"))
    path = save_vector(trained, tmp_path / "in-short.gguf")
    s = RunSettings("What is the capital of Italy?", rows=steered(load_vector(path), (1.0,)), max_new_tokens=8,
                    probe_every=0)
    start, _, _, done = collect(bundled, s)
    control = repeng.ControlModel(bundled.model, list(trained.layers))
    try:
        control.set_control(repeng.ControlVector.import_gguf(str(path)), 1.0)
        theirs = generate_greedy(bundled, start.prompt_ids, 8, eos_ids(bundled))
    finally:
        control.unwrap()
    assert done.rows[1].token_ids == theirs and done.rows[1].text.startswith("In short:")
