"""Trained steering vectors (bias-only adaptation) on the bundled model: what training learns, that the
model is untouched, that the file is an ordinary vector, and the shipped example and preset."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import add_everywhere, collect

from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.errors import UserError
from steer_ui.vectors.examples import Example, parse_example, read_examples_jsonl
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path, preset_vectors
from steer_ui.vectors.training import TrainConfig, _encode, _token_logprobs, split, train_vector

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "assets" / "examples" / "in-short.jsonl"
PRESET_LAYERS = (10, 11, 12, 13)  # the shipped preset's (assets/vectors/README.md)


@pytest.fixture(scope="module")
def trained(bundled):
    """The shipped preset's recipe, trained here; the model's weights recorded before."""
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in bundled.model.named_parameters()}
    result = train_vector(bundled, read_examples_jsonl(DATA), TrainConfig(PRESET_LAYERS), name="in-short")
    return result, before


def _heldout(bundled):
    examples = read_examples_jsonl(DATA)
    _, held = split(len(examples), TrainConfig(PRESET_LAYERS).holdout, 0)
    return [examples[i] for i in held]


def _reply_logprob(bundled, example: Example) -> float:
    with torch.no_grad():
        total, _ = _token_logprobs(bundled, [_encode(bundled, example.prompt, example.completion, 1024)])
    return float(total)


def test_training_leaves_every_weight_bitwise_unchanged(bundled, trained):
    _, before = trained
    for name, p in bundled.model.named_parameters():
        assert torch.equal(p, before[name][0]) and p.requires_grad == before[name][1], name
    assert all(p.grad is None for p in bundled.model.parameters())


def test_held_out_completions_gain_several_nats_at_coefficient_one(bundled, trained):
    """Measured with the textbook activation addition (coef 1, every position), not the training code's
    own hooks: coefficient 1 is what was trained."""
    result, _ = trained
    vec = result.vector
    held = _heldout(bundled)
    base = [_reply_logprob(bundled, e) for e in held]
    with add_everywhere(bundled, vec.directions, 1.0):
        steered_lp = [_reply_logprob(bundled, e) for e in held]
    gains = [s - b for s, b in zip(steered_lp, base)]
    assert sum(gains) / len(gains) > 3.0, gains  # nats per held-out example
    assert result.heldout_loss < result.baseline_heldout
    # The held-out loss the trainer reports is the mean per-token NLL of those same completions.
    with add_everywhere(bundled, vec.directions, 1.0), torch.no_grad():
        per_token = []
        for e in held:
            total, count = _token_logprobs(bundled, [_encode(bundled, e.prompt, e.completion, 1024)])
            per_token.append(-float(total / count))
    assert sum(per_token) / len(per_token) == pytest.approx(result.heldout_loss, abs=2e-3)


def test_generating_at_coefficient_one_shows_the_behaviour_on_held_out_prompts(bundled, trained):
    result, _ = trained
    opened = 0
    held = _heldout(bundled)
    for e in held:
        settings = RunSettings(e.prompt, rows=steered(result.vector, (1.0,)), max_new_tokens=6, probe_every=0)
        _, _, _, done = collect(bundled, settings)
        assert not done.rows[0].text.startswith("In short")  # the baseline does not
        opened += done.rows[1].text.startswith("In short:")
    assert opened >= len(held) - 1


def test_the_vector_file_records_how_it_was_trained(bundled, trained, tmp_path):
    from steer_ui.vectors.files import save_vector

    result, _ = trained
    meta = result.vector.metadata
    assert meta["method"] == "trained" and meta["objective"] == "likelihood" and meta["examples"] == "40"
    assert float(meta["lr"]) == TrainConfig(PRESET_LAYERS).lr and int(meta["steps"]) == len(result.curve)
    curve = json.loads(meta["loss_curve"])
    assert curve[0]["step"] == 1 and any("heldout" in p for p in curve)
    assert float(meta["heldout_loss"]) == pytest.approx(result.heldout_loss, abs=1e-4)
    assert set(json.loads(meta["act_norms"])) == {str(x) for x in PRESET_LAYERS}
    back = load_vector(save_vector(result.vector, tmp_path / "v.safetensors"))
    assert back.metadata["loss_curve"] == meta["loss_curve"]
    gguf = load_vector(save_vector(result.vector, tmp_path / "v.gguf"))  # repeng / llama.cpp's format
    assert all(torch.allclose(gguf.directions[x], result.vector.directions[x]) for x in PRESET_LAYERS)


def test_the_shipped_preset_rebuilds_from_the_shipped_examples(bundled, trained):
    result, _ = trained
    shipped = load_vector(preset_vector_path("in-short", "smollm2-135m"))
    assert "in-short" in preset_vectors("smollm2-135m")
    assert shipped.layers == list(PRESET_LAYERS) and shipped.metadata["method"] == "trained"
    for layer in PRESET_LAYERS:
        cos = torch.nn.functional.cosine_similarity(shipped.directions[layer], result.vector.directions[layer], dim=0)
        ratio = float(shipped.directions[layer].norm() / result.vector.directions[layer].norm())
        assert cos > 0.99 and 0.97 < ratio < 1.03, (layer, float(cos), ratio)


def test_preference_examples_move_the_margin_against_the_reference(bundled):
    examples = [Example(f"Describe the number {n}.", chosen=f"In short: {n} is a number.",
                        rejected=f"Well, {n} is a number.") for n in (3, 5, 8, 13, 21, 34)]
    config = TrainConfig((12, 13), steps=12, lr=0.05, batch_size=3, holdout=0, eval_every=4)
    result = train_vector(bundled, examples, config)

    def margin(e: Example) -> float:
        with torch.no_grad():
            chosen, _ = _token_logprobs(bundled, [_encode(bundled, e.prompt, e.chosen, 1024)])
            rejected, _ = _token_logprobs(bundled, [_encode(bundled, e.prompt, e.rejected, 1024)])
        return float(chosen - rejected)

    before = [margin(e) for e in examples]
    with add_everywhere(bundled, result.vector.directions, 1.0):
        after = [margin(e) for e in examples]
    assert all(a > b + 1.0 for a, b in zip(after, before)), (before, after)
    assert result.vector.metadata["objective"] == "preference" and result.stopped == "steps"
    assert result.curve[-1]["train"] < result.curve[0]["train"]


def test_an_interrupt_or_a_cancel_keeps_the_best_vector_so_far(bundled):
    examples = read_examples_jsonl(DATA)[:8]
    config = TrainConfig((12,), steps=50, batch_size=2, eval_every=1, holdout=0.25)

    def interrupt(p):
        if p.step == 3:
            raise KeyboardInterrupt

    result = train_vector(bundled, examples, config, progress=interrupt)
    assert result.stopped == "interrupted" and len(result.curve) == 3 and result.vector.layers == [12]
    assert float(result.vector.directions[12].norm()) > 0 and result.best_step >= 1
    cancel = threading.Event()
    cancel.set()
    stopped = train_vector(bundled, examples, config, cancel=cancel)
    assert stopped.stopped == "cancelled" and float(stopped.vector.directions[12].norm()) == 0


@pytest.mark.parametrize("obj, message", [
    ({"prompt": "q"}, 'expected {"prompt": ..., "completion": ...}'),
    ({"prompt": "q", "completion": " "}, "each text non-empty"),
    ({"prompt": "q", "chosen": "a"}, "expected"),
    ([1, 2], "expected"),
    ({"prompt": "q", "completion": "x" * 50}, "the completion is 50 characters; the limit is 10"),
])
def test_bad_examples_are_named(obj, message):
    with pytest.raises(UserError) as err:
        parse_example(obj, "ex:3", max_chars=10)
    assert str(err.value).startswith("ex:3: ") and message in str(err.value)


def test_bad_settings_are_one_message(bundled, tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                     + json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    with pytest.raises(UserError, match="mixes completion and chosen/rejected examples"):
        read_examples_jsonl(mixed)
    examples = read_examples_jsonl(DATA)[:4]
    for config, message in [(TrainConfig((30,)), "layer 30 is out of range"),
                            (TrainConfig((1,), steps=0), "--steps must be >= 1"),
                            (TrainConfig((1,), lr=float("nan")), "--lr must be a positive number"),
                            (TrainConfig((1,), holdout=1.0), r"--holdout must be in \[0, 1\)")]:
        with pytest.raises(UserError, match=message):
            train_vector(bundled, examples, config)
    with pytest.raises(UserError, match="need at least 2 examples"):
        train_vector(bundled, examples[:1], TrainConfig((1,)))


def test_the_cli_trains_writes_and_inspects_a_vector(tmp_path):
    data = tmp_path / "four.jsonl"
    data.write_text("".join(line + "\n" for line in DATA.read_text().splitlines()[:6]))
    out = tmp_path / "v.gguf"
    cmd = [sys.executable, "-m", "steer_ui", "vector", "--method", "trained", "--data", str(data), "--layers",
           "12-13", "--steps", "4", "--batch-size", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and "4 steps" in done.stderr and "held-out loss" in done.stderr
    assert load_vector(out).layers == [12, 13]
    inspect = subprocess.run([sys.executable, "-m", "steer_ui", "inspect-vector", str(
        preset_vector_path("in-short", "smollm2-135m")), "--model", "smollm2-135m"], capture_output=True,
        text=True, cwd=ROOT, timeout=600)
    assert inspect.returncode == 0, inspect.stderr
    assert "method trained" in inspect.stdout and "rel" in inspect.stdout and "logit lens" in inspect.stdout
    bad = subprocess.run([*cmd, "--pairs", str(data)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "not allowed with argument" in bad.stderr  # --data and --pairs
    wrong = subprocess.run([sys.executable, "-m", "steer_ui", "vector", "--data", str(data), "--out", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert wrong.returncode != 0 and "training takes --method trained" in wrong.stderr
    assert "Traceback" not in wrong.stderr


# --- the dashboard's "Train a vector from examples" ---------------------------------------------------------
def _dashboard(bundled, tmp_path, limits=None):
    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.log.store import Store

    return Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path,
                                limits=limits))


def test_the_dashboard_trains_with_a_live_chart_and_selects_the_vector(bundled, tmp_path):
    dash = _dashboard(bundled, tmp_path)
    text = "\n".join(DATA.read_text().splitlines()[:10])
    updates = list(dash.train.train(text, None, "12-13", 10, None))
    charts = [u["train_chart"] for u in updates]
    assert len(updates) == 11 and [len(c.data[0].x) for c in charts[:3]] == [1, 2, 3]
    assert "training: step 10 of 10" in updates[-2]["train_status"]
    final = updates[-1]
    assert final["vector"]["value"] == "uploaded or computed file" and final["layers"] == "12-13"
    assert final["train_status"].startswith("**Trained** (")
    vector = load_vector(final["vector_file"])
    assert vector.metadata["method"] == "trained" and vector.layers == [12, 13]
    run = list(dash.generate.generate(prompt="What is 2 + 2?", vector="file", vector_file=final["vector_file"],
                                      coefs="1", layers="12-13", max_new_tokens=3))[-1]
    assert run["result"]["status"] == "finished"
    stored = dash.ctx.store.run_vectors(dash.ctx.store.get_run(run["result"]["run_id"]))
    assert [v.metadata["method"] for v in stored.values()] == ["trained"]  # logged with the run, replayable
    reopened = dash.history.open_run(run["result"]["run_id"], run["browser_id"])
    assert reopened["result"]["rows"][1]["text"] == run["result"]["rows"][1]["text"]


def test_stop_training_ends_it_with_the_best_vector_so_far(bundled, tmp_path):
    from types import SimpleNamespace

    dash = _dashboard(bundled, tmp_path)
    page = SimpleNamespace(session_hash="tab-1")
    text = "\n".join(DATA.read_text().splitlines()[:10])
    updates = dash.train.train(text, None, "12", 500, None, request=page)
    first = next(updates)
    dash.train.stop(page)
    final = list(updates)[-1]
    assert "training: step 1" in first["train_status"] and "(cancelled," in final["train_status"]
    assert not dash.ctx.model_lock.locked() and not dash.train.stops


def test_hosted_training_is_capped_before_any_work(bundled, tmp_path, monkeypatch):
    import gradio as gr

    from steer_ui.app.hosted import Limits
    from steer_ui.vectors import training

    monkeypatch.setattr(training, "train_vector", lambda *a, **k: pytest.fail("trained"))
    dash = _dashboard(bundled, tmp_path, Limits(train_examples=3, train_steps=20, pair_chars=100))
    text = "\n".join(DATA.read_text().splitlines()[:4])
    for args, message in [((text, None, "12", 5, None), "4 examples; this server's limit is 3"),
                          (("\n".join(text.splitlines()[:3]), None, "12", 21, None), "21 steps; this server's limit"),
                          ((json.dumps({"prompt": "q", "completion": "x" * 101}), None, "12", 5, None),
                           "the completion is 101 characters; the limit is 100"),
                          (("x" * 100_000, None, "12", 5, None), "the examples text is 100,000 characters"),
                          ((text, None, "12", "lots", None), "steps must be a number, got 'lots'"),
                          ((text, None, "12", 2.5, None), "steps must be a whole number, got 2.5"),
                          ((text, None, "0-30000000", 5, None), "layer 30000000 is out of range"),
                          ((text, None, "1," * 100_000, 5, None), "the layers to train field is 200,000 characters")]:
        with pytest.raises(gr.Error) as err:
            next(dash.train.train(*args))
        assert message in err.value.message


def test_a_bf16_model_trains_float32_biases_and_keeps_its_weights(tiny_dirs):
    from steer_ui.model.loading import load_model

    lm = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="bfloat16")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    examples = [Example(f"Say {w}.", completion=f"In short: {w}.") for w in ("yes", "no", "maybe", "later")]
    result = train_vector(lm, examples, TrainConfig((1, 2), steps=3, batch_size=2, holdout=0))
    assert all(v.dtype == torch.float32 and float(v.norm()) > 0 for v in result.vector.directions.values())
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert lm.dtype == torch.bfloat16
