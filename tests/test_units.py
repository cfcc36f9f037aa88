"""Small pieces with exact answers: parsing, choices, think tracking, detokenizing, sampling, vector files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steer_ui.engine.decode import _Row
from steer_ui.engine.detokenize import Detokenizer
from steer_ui.engine.events import RowInfo
from steer_ui.engine.probe import build_choices, build_tree
from steer_ui.engine.run_settings import RunSettings, SteeredRow
from steer_ui.engine.sampling import Sampler
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.vectors.files import load_vector, save_vector
from steer_ui.vectors.layers import format_layers, parse_layers
from steer_ui.vectors.vector import SteeringVector


def test_parse_layers():
    assert parse_layers("12-15") == (12, 13, 14, 15)
    assert parse_layers("3,5,7") == (3, 5, 7)
    assert parse_layers("1-2, 7") == (1, 2, 7)
    assert parse_layers("all") is None
    with pytest.raises(UserError, match="out of range.*30 layers"):
        parse_layers("28-31", n_layers=30)
    with pytest.raises(UserError, match="cannot read layers"):
        parse_layers("ten")
    with pytest.raises(UserError, match="backwards"):
        parse_layers("5-3")
    for layers in ((12, 13, 14, 15), (3, 5, 7), (10, 11, 12, 20), (0,)):
        assert parse_layers(format_layers(layers)) == layers
    assert format_layers(None) == "all" and parse_layers(format_layers(None)) is None


def test_scope_parse():
    assert Scope.parse("kick:64") == Scope("kick", 64)
    assert str(Scope.parse("GENERATED")) == "generated"
    for bad in ("kick:0", "kick", "everywhere"):
        with pytest.raises(UserError, match="unknown scope"):
            Scope.parse(bad)


@pytest.mark.parametrize("field,value,message", [
    ("prompt", "   ", "prompt is empty"),
    ("rows", (SteeredRow(SteeringVector({0: torch.ones(4)}), float("nan")),), "not a finite number"),
    ("max_new_tokens", 0, r"max new tokens must be >= 1, got 0"),
    ("top_p", 2.0, r"top-p must be in \(0, 1\], got 2.0"),
    ("top_p", 0.0, r"top-p must be in \(0, 1\], got 0.0"),
    ("temperature", -1.0, r"temperature must be a finite number >= 0, got -1.0"),
    ("probe_min_mass", 1.5, r"probe min mass must be in \[0, 1\], got 1.5"),
    ("cache", "paged", "unknown cache 'paged'"),
    ("probe_choices", ("Yes",), r"two or more choices \(or a gold answer\)"),
    ("probe_choices", ("Yes", " "), "a probe choice is empty"),
    ("probe_choices", tuple(str(i) for i in range(9)), "at most 8 choices of at most 64 characters"),
    ("probe_choices", ("Yes", "x" * 65), "at most 8 choices of at most 64 characters"),
    ("probe_gold", "x" * 65, "gold answer must be 1 to 64 characters"),
    ("probe_choices", ("Yes", "yes"), "must differ"),
])
def test_settings_reject_bad_values(field, value, message):
    ok = RunSettings("hi", rows=(SteeredRow(SteeringVector({0: torch.ones(4)}), 2.0),))
    ok.validate()
    with pytest.raises(UserError, match=message):
        RunSettings(**{"prompt": "hi", "rows": ok.rows, field: value}).validate()


def test_choices_collect_single_token_variants(bundled):
    tok = bundled.tokenizer
    yes, no = build_choices(tok, ("Yes", "No"))
    for form in ("Yes", " Yes", "yes", " yes"):
        ids = tok.encode(form, add_special_tokens=False)
        if len(ids) == 1:
            assert ids[0] in yes.token_ids
    assert all(tok.decode([i]).strip().lower() == "yes" for i in yes.token_ids)
    assert not set(yes.token_ids) & set(no.token_ids)
    assert all(len(v) == 1 for v in yes.variants + no.variants), "yes/no read exactly as before: one-token forms"


def test_multi_token_choices_and_their_errors(bundled):
    tok = bundled.tokenizer
    long_word, = build_choices(tok, ("antidisestablishmentarianism",))
    assert long_word.token_ids == () and all(len(v) > 1 for v in long_word.variants)
    assert {tok.decode(list(v)).strip() for v in long_word.variants} == {"antidisestablishmentarianism"}
    n391, = build_choices(tok, ("391",))
    assert sorted(tok.decode(list(v)) for v in n391.variants) == [" 391", "391"]
    with pytest.raises(UserError, match="read the same tokens"):
        build_choices(tok, ("Paris", " Paris"))
    with pytest.raises(UserError, match="a gold answer is empty"):
        build_choices(tok, ("\u3000",), gold=True)  # an ideographic space: nothing left to read
    with pytest.raises(UserError, match="at most 32 tokens"):
        build_choices(tok, ("1" * 40,))
    with pytest.raises(UserError, match="extra positions at every reading; at most 256"):
        build_tree(build_choices(tok, tuple(str(i) * 31 for i in range(8))))


def test_think_tag_split_over_tokens_is_tracked(bundled):
    """SmolLM2 has no <think> token: the tag arrives in pieces and must still be noticed once."""
    tok = bundled.tokenizer
    ids = tok.encode("Let me think. </think>\n\nThe answer is yes. <think> again", add_special_tokens=False)
    assert len(tok.encode("</think>", add_special_tokens=False)) > 1
    row = _Row(RowInfo(0, "baseline", 0.0), Detokenizer(tok), thinking=True)
    ends, phases = [], []
    for i in ids:
        row.append(i, "<think>", "</think>")
        ends.append(len("".join(row.text)))
        phases.append(row.last_was_thinking)
    text = "".join(row.text)
    close_end = text.index("</think>") + len("</think>")
    reopen_end = text.index("<think>", close_end) + len("<think>")
    # A token is thinking up to the one that completes </think>, answer after it, thinking again from
    # the token that completes the reopening <think>.
    expected = [end <= close_end or end >= reopen_end for end in ends]
    assert phases == expected
    assert row.thinking is True


def test_detokenizer_matches_full_decode_with_multibyte_text(bundled):
    tok = bundled.tokenizer
    text = "Prüfung: 17 ist prim ✓ — 素数です 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    d = Detokenizer(tok)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_sampler_greedy_and_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert Sampler(RunSettings("x"), torch.device("cpu"))(logits).tolist() == [1, 0]
    top1 = Sampler(RunSettings("x", temperature=1.0, top_k=1, seed=1), torch.device("cpu"))
    assert all(top1(logits).tolist() == [1, 0] for _ in range(20))
    nucleus = Sampler(RunSettings("x", temperature=1.0, top_p=0.5, seed=1), torch.device("cpu"))
    picks = {nucleus(logits)[0].item() for _ in range(200)}
    assert picks <= {1, 3} and picks == {1, 3}  # 3.0 and 2.9 hold ~0.5 together; nothing else


def test_sampler_matches_softmax_frequencies():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    sampler = Sampler(RunSettings("x", temperature=1.0, seed=0), torch.device("cpu"))
    counts = torch.bincount(torch.cat([sampler(logits) for _ in range(4000)]), minlength=3).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_vector_files_round_trip_and_checks(tmp_path):
    v = SteeringVector({3: torch.arange(8, dtype=torch.float32), 4: torch.ones(8)}, model_hint="llama")
    path = tmp_path / "v.gguf"
    save_vector(v, path)
    back = load_vector(path)
    assert back.layers == [3, 4] and back.model_hint == "llama"
    assert torch.equal(back.directions[3], v.directions[3])
    assert back.check_against(n_layers=8, hidden_size=8, layers=None) == [3, 4]
    with pytest.raises(UserError, match="hidden size 8 but the model has 576"):
        back.check_against(n_layers=30, hidden_size=576, layers=None)
    with pytest.raises(UserError, match="layer 5 is not in the vector"):
        back.check_against(n_layers=8, hidden_size=8, layers=(5,))
    with pytest.raises(UserError, match="layer 9 is out of range"):
        back.check_against(n_layers=8, hidden_size=8, layers=(9,))


def test_bad_vector_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    (tmp_path / "v.txt").write_text("1 2 3")
    nan = SteeringVector({0: torch.tensor([1.0, math.nan])})
    from safetensors.torch import save_file
    save_file({"direction.0": nan.directions[0]}, str(tmp_path / "nan.safetensors"))
    save_file({"direction.0": torch.ones(3), "direction.1": torch.ones(4)}, str(tmp_path / "ragged.safetensors"))
    cases = {
        "missing.gguf": "no such vector file",
        "junk.gguf": "not a readable GGUF",
        "v.txt": "unknown vector format",
        "nan.safetensors": "NaN or infinite",
        "ragged.safetensors": "different sizes",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_vector(tmp_path / name)
    model_gguf = tmp_path / "model.gguf"
    import gguf
    w = gguf.GGUFWriter(str(model_gguf), "llama")
    w.add_tensor("token_embd.weight", np.ones((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match="architecture is 'llama'"):
        load_vector(model_gguf)


def test_side_by_side_printer_fits_long_row_labels(monkeypatch):
    """Mixed runs have long labels: the outcome moves to a second header line and the probe table's
    columns widen to their labels, so nothing is cut."""
    import io

    from steer_ui.cli.printer import SideBySidePrinter
    from steer_ui.engine.events import DoneEvent, ProbeEvent, RowResult, StartEvent, Timing

    monkeypatch.setenv("COLUMNS", "90")  # three columns of 28
    labels = ["baseline", "reconsideration +4 @15-18", "confidence -3 @16-19"]
    out, err = io.StringIO(), io.StringIO()
    printer = SideBySidePrinter(out, err)
    printer(StartEvent("m", [1], "p", [RowInfo(i, label, 0.0) for i, label in enumerate(labels)], [15, 16, 17, 19],
                       "all", [], [], 4))
    for i in range(3):
        printer(ProbeEvent(i, 0, -1.25 * i, 0.5, {}, True))
    printer(DoneEvent([RowResult(i, label, 0.0, [5, 6], "Yes.", "eos") for i, label in enumerate(labels)],
                      Timing(0, 0, 0, 2)))
    lines = out.getvalue().splitlines()
    assert all(label in lines[0] for label in labels) and lines[1].count("(eos, 2 tok)") == 3
    table = lines[lines.index(next(x for x in lines if x.startswith("step"))):]
    assert all(label in table[0] for label in labels) and "-2.50" in table[1]
    assert "layers 15-17,19" in err.getvalue()
