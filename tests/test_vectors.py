"""Computing vectors (repeng-compatible), presets, file formats, safe loading, arithmetic, guidance."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy
import pytest
import torch

from steer_ui.errors import UserError
from steer_ui.vectors import files
from steer_ui.vectors.contrastive import Pair, compute_vector, direction, last_token_states, read_pairs_jsonl
from steer_ui.vectors.files import load_vector, save_vector
from steer_ui.vectors.guidance import layer_stats, logit_lens, relative_dose, suggest_band
from steer_ui.vectors.presets import build_pairs, load_template, preset_names, resolve_vector
from steer_ui.vectors.vector import SteeringVector, combine

numpy.float_ = numpy.float64  # repeng 0.4 still names the alias NumPy 2 removed
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def small_pairs(bundled) -> list[Pair]:
    return build_pairs(bundled, load_template("confidence"))[::6]  # 25 pairs across personas and openers


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


@pytest.mark.parametrize("method", ["pca_diff", "pca_center"])
def test_pca_agrees_with_repeng(bundled, small_pairs, method):
    repeng = pytest.importorskip("repeng")
    layers = list(range(4, 24, 3))
    ours = compute_vector(bundled, small_pairs, layers, method, batch_size=8).vector
    dataset = [repeng.DatasetEntry(positive=p.positive, negative=p.negative) for p in small_pairs]
    theirs = repeng.ControlVector.train(bundled.model, bundled.tokenizer, dataset, hidden_layers=layers,
                                        batch_size=8, method=method)
    for layer in layers:
        assert _cos(ours.directions[layer], torch.from_numpy(theirs.directions[layer])) >= 0.99, layer


def test_gguf_we_write_loads_in_repeng(tmp_path):
    repeng = pytest.importorskip("repeng")
    vec = SteeringVector({2: torch.randn(16), 5: torch.randn(16)}, model_hint="qwen2")
    path = save_vector(vec, tmp_path / "v.gguf")
    theirs = repeng.ControlVector.import_gguf(str(path))
    assert theirs.model_type == "qwen2" and sorted(theirs.directions) == [2, 5]
    for layer in (2, 5):
        assert numpy.array_equal(theirs.directions[layer], vec.directions[layer].numpy())


def test_preset_rebuilds_to_the_shipped_file(bundled):
    shipped = load_vector(ASSETS / "vectors" / "smollm2-135m" / "confidence.safetensors")
    assert shipped.metadata["method"] == "mean_diff" and shipped.layers == list(range(30))
    rebuilt = compute_vector(bundled, build_pairs(bundled, load_template("confidence")), shipped.layers,
                             "mean_diff", batch_size=32).vector
    assert rebuilt.metadata["dataset_hash"] == shipped.metadata["dataset_hash"]
    for layer in shipped.layers:
        assert _cos(rebuilt.directions[layer], shipped.directions[layer]) >= 0.999, layer


def test_every_preset_ships_for_the_bundled_model():
    assert set(preset_names()) >= {"reconsideration", "verbosity", "confidence"}
    for name in preset_names():
        vec = load_vector(ASSETS / "vectors" / "smollm2-135m" / f"{name}.safetensors")
        stats = json.loads(vec.metadata["layer_stats"])
        assert vec.hidden_size == 576 and len(stats) == 30
        lo, hi = map(int, vec.metadata["suggested_band"].split("-"))
        assert all(s["pair_accuracy"] >= 0.95 for s in stats if lo <= s["layer"] <= hi)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_does_not_change_states(bundled, side):
    texts = ["Is 7 prime?", "A much longer text that needs no padding at all, unlike the others here.", "Yes."]
    layers = [3, 17]
    old = bundled.tokenizer.padding_side
    bundled.tokenizer.padding_side = side
    try:
        batched = last_token_states(bundled, texts, layers, batch_size=3)
    finally:
        bundled.tokenizer.padding_side = old
    for i, text in enumerate(texts):
        alone = last_token_states(bundled, [text], layers, batch_size=1)
        for layer in layers:
            torch.testing.assert_close(batched[layer][i], alone[layer][0], rtol=1e-4, atol=1e-3)


def test_mean_diff_and_sign_rule():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 8, generator=g)
    shift = torch.zeros(8)
    shift[3] = 5.0
    states = torch.stack([base + shift, base], dim=1).reshape(40, 8)  # pos, neg interleaved
    torch.testing.assert_close(direction(states, "mean_diff"), shift)
    # PCA (mean-centred, like scikit-learn's) sees variance, not a constant shift: vary the gap's size.
    gaps = torch.linspace(1.0, 9.0, 20)[:, None] * torch.eye(8)[3]
    noisy = torch.stack([base + gaps, base], dim=1).reshape(40, 8) + 0.1 * torch.randn(40, 8, generator=g)
    for method in ("pca_diff", "pca_center"):
        d = direction(noisy, method)
        assert d[3] > 0.9 and abs(float(d.norm()) - 1) < 1e-5  # unit-norm, positives project higher
        swapped = noisy.reshape(20, 2, 8).flip(1).reshape(40, 8)
        assert direction(swapped, method)[3] < -0.9


def test_guidance_numbers():
    states = torch.tensor([[2.0, 0.0], [0.0, 0.0], [3.0, 1.0], [1.0, 1.0]])
    s = layer_stats(7, states, torch.tensor([1.0, 0.0]))
    assert s.pair_accuracy == 1.0 and s.effect_size > 0 and s.vector_norm == 1.0
    assert relative_dose(-4.0, s) == pytest.approx(4.0 / s.act_norm)
    stats = [layer_stats(i, states, torch.tensor([1.0, 0.0]) * (1 if i in (5, 6, 7, 8) else -1)) for i in range(12)]
    assert suggest_band(stats, width=4) == (5, 8)


def test_logit_lens_reads_an_unembedding_row(bundled):
    """A direction that the final norm maps onto token t's unembedding row promotes t and demotes -t."""
    tid = bundled.tokenizer.encode(" correction", add_special_tokens=False)[0]
    row = bundled.model.get_output_embeddings().weight[tid].detach()
    vec = row / bundled.model.model.norm.weight.detach()  # undo the norm's per-dimension gain
    promoted, _ = logit_lens(bundled, vec, k=4)
    _, suppressed = logit_lens(bundled, -vec, k=4)
    assert promoted[0] == " correction" and suppressed[0] == " correction"


def test_safe_loaders_and_formats(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"direction.0": Payload()}, f)
    with pytest.raises(UserError, match="refused or unreadable .pt"):
        load_vector(tmp_path / "evil.pt")
    assert not marker.exists(), "the pickle payload must never run"
    numpy.save(tmp_path / "obj.npy", numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="refused or unreadable numpy"):
        load_vector(tmp_path / "obj.npy")

    matrix = torch.randn(3, 8)
    torch.save({"direction.1": matrix[1], "layers.2": matrix[2]}, tmp_path / "d.pt")
    torch.save(matrix, tmp_path / "m.pt")
    numpy.save(tmp_path / "m.npy", matrix.numpy())
    numpy.savez(tmp_path / "m.npz", **{"direction.0": matrix[0].numpy()})
    assert load_vector(tmp_path / "d.pt").layers == [1, 2]
    for name in ("m.pt", "m.npy"):
        v = load_vector(tmp_path / name)
        assert v.layers == [0, 1, 2] and torch.equal(v.directions[2], matrix[2])
    assert load_vector(tmp_path / "m.npz").layers == [0]

    vec = SteeringVector({4: torch.randn(8)}, model_hint="llama", metadata={"method": "mean_diff"})
    back = load_vector(save_vector(vec, tmp_path / "v.safetensors"))
    assert back.metadata["method"] == "mean_diff" and json.loads(back.metadata["layers"]) == [4]
    assert torch.equal(back.directions[4], vec.directions[4])
    with pytest.raises(UserError, match="save as .gguf or .safetensors"):
        save_vector(vec, tmp_path / "v.pt")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == []


def test_arithmetic():
    a = SteeringVector({0: torch.ones(4), 1: torch.ones(4)}, model_hint="llama", name="a")
    b = SteeringVector({1: 2 * torch.ones(4), 2: torch.ones(4)}, model_hint="llama", name="b")
    assert torch.equal((a + b).directions[1], 3 * torch.ones(4))
    assert (a + b).layers == [0, 1, 2]
    assert torch.equal((a - b).directions[2], -torch.ones(4))
    assert torch.equal((-a).directions[0], -torch.ones(4))
    assert torch.equal((2.5 * a).directions[0], 2.5 * torch.ones(4))
    mixed, warnings = combine([(0.5, a), (2.0, SteeringVector({0: torch.ones(4)}, model_hint="qwen2"))])
    assert torch.equal(mixed.directions[0], 2.5 * torch.ones(4)) and "different models" in warnings[0]
    with pytest.raises(UserError, match="different hidden sizes"):
        combine([(1.0, a), (1.0, SteeringVector({0: torch.ones(5)}))])


def test_pairs_file_errors_name_the_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"positive": "a", "negative": "b"}\n\n{"positive": "c", "negative": "d"}\n')
    assert read_pairs_jsonl(good) == [Pair("a", "b"), Pair("c", "d")]
    cases = {'{"positive": "a"}\n': ":1: expected", '{"positive": "a", "negative": "b"}\nnot json\n': ":2: not valid",
             '{"positive": " ", "negative": "b"}\n': "must not be empty", "\n": "no pairs found"}
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            read_pairs_jsonl(bad)


def test_vector_bytes_round_trip(tmp_path):
    """``to_bytes``/``from_bytes`` are the one safetensors writer and reader; a .safetensors file holds those bytes."""
    vec = SteeringVector({2: torch.randn(8), 5: torch.randn(8)}, model_hint="llama", name="mine",
                         metadata={"method": "mean_diff"})
    data = vec.to_bytes()
    back = SteeringVector.from_bytes(data)
    assert (back.name, back.model_hint, back.metadata["method"]) == ("mine", "llama", "mean_diff")
    assert back.layers == [2, 5] and back.content_hash() == vec.content_hash()
    assert all(torch.equal(back.directions[x], vec.directions[x]) for x in (2, 5))
    assert SteeringVector.from_bytes(data, name="other.safetensors").name == "other.safetensors"
    # A .safetensors file holds these bytes (the header's key order is not fixed, so compare what they say).
    on_disk = SteeringVector.from_bytes(save_vector(vec, tmp_path / "v.safetensors").read_bytes())
    assert on_disk.content_hash() == vec.content_hash() and on_disk.metadata == back.metadata
    assert load_vector(tmp_path / "v.safetensors").name == "v.safetensors"  # a file is named by its file
    # Vectors compare by identity (eq=False): tensors have no single truth value.
    assert back != vec and [vec] == [vec] and vec in [back, vec]
    with pytest.raises(UserError, match="not a readable safetensors"):
        SteeringVector.from_bytes(b"junk" * 10, where="upload")


def test_oversized_vector_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = save_vector(SteeringVector({0: torch.randn(64)}), tmp_path / "v.safetensors")
    monkeypatch.setattr(files, "MAX_VECTOR_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(UserError, match="too large for a steering vector"):
        load_vector(path)


def test_resolve_vector_names_presets_and_files(tmp_path):
    preset = resolve_vector("confidence", "smollm2-135m")
    assert preset.name == "confidence" and preset.hidden_size == 576 and len(preset.layers) == 30
    assert resolve_vector("confidence", "SmolLM2-135M").content_hash() == preset.content_hash()
    path = save_vector(SteeringVector({1: torch.randn(8)}, name="x"), tmp_path / "mine.gguf")
    assert resolve_vector(str(path), "smollm2-135m").layers == [1]
    with pytest.raises(UserError, match="unknown preset vector 'nope' for smollm2-135m: choose from .*confidence"):
        resolve_vector("nope", "smollm2-135m")
    with pytest.raises(UserError, match="no preset vectors ship for some/model"):
        resolve_vector("confidence", "some/model")
    with pytest.raises(UserError, match="no such vector file"):
        resolve_vector(str(tmp_path / "missing.gguf"), "smollm2-135m")
