"""What a hostile visitor of a hosted server sends, refused at the cause in the lower layers.

Each test reproduces one attack on ``python app.py --hosted``: a zip bomb of a vector file, a preset
padded with megabytes of metadata, pair texts of thousands of tokens, a huge generated question set or
a server path typed as questions, a forged copy of a preset in the session log, two processes converting
the bundled model at once, database errors that showed the URL or a raw driver error. Refusals are
checked to happen before the expensive step (that step is replaced by one that fails the test), and
where memory is the point its growth is measured.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sqlalchemy import event
from tiny import build_tiny_model

from steer_ui.engine.decode import run
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.errors import UserError
from steer_ui.experiments import questions
from steer_ui.log.database import display_url
from steer_ui.log.recorder import RunRecorder
from steer_ui.log.store import Store
from steer_ui.model import loading
from steer_ui.model.loading import load_model
from steer_ui.vectors import contrastive, files
from steer_ui.vectors.files import load_vector, max_values_for, save_vector
from steer_ui.vectors.vector import SteeringVector

MB = 2**20
CAP = max_values_for(30, 576)  # the bundled model: 30 layers x 576


class Forbidden(BaseException):
    """Not an Exception: no ``except Exception`` of the code under test can turn it into a refusal."""


def _forbid(monkeypatch, target, name: str) -> None:
    """Make ``target.name`` fail the test if it is ever called: the refusal must come before it."""
    def called(*args, **kwargs):
        raise Forbidden(f"{name} was called: the input was read before it was refused")
    monkeypatch.setattr(target, name, called)


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip_bomb(path: Path, member: str, header: bytes, zeros: int) -> None:
    """A deflated member of ``header`` then ``zeros`` zero bytes: a few hundred KB on disk."""
    chunk = bytes(4 * MB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(member, "w", force_zip64=True) as f:
            f.write(header)
            for _ in range(zeros // len(chunk)):
                f.write(chunk)


# --- 1. vector files checked from their headers --------------------------------------------------------
def test_npz_bomb_is_refused_from_its_members_sizes_before_unpacking(tmp_path, monkeypatch):
    """The attack: a 255 KB .npz whose one member inflates to 268 MB ("hidden size 67108864")."""
    bomb = tmp_path / "bomb.npz"
    n = 67108864
    _zip_bomb(bomb, "direction.0.npy", _npy_header((n,)), n * 4)
    assert bomb.stat().st_size < MB
    _forbid(monkeypatch, np.lib.format, "read_array")
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"bomb\.npz: unpacks to 268,435,\d+ bytes; a steering vector for this "
                                            r"model may take at most 2,\d+,\d+"):
            load_vector(bomb, max_values=CAP, name="bomb.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * MB


def test_npy_and_npz_headers_declaring_too_much_are_refused_before_the_data(tmp_path, monkeypatch):
    too_many = np.zeros((40, 576), np.float32)  # 23,040 values: more than 34 x 576 = 19,584
    np.save(tmp_path / "big.npy", too_many)
    np.savez(tmp_path / "big.npz", **{f"direction.{i}": row for i, row in enumerate(too_many)})
    # A header declaring 67M floats over 64 bytes of data (a file and an archive member).
    (tmp_path / "liar.npy").write_bytes(_npy_header((67108864,)) + bytes(64))
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as zf:
        zf.writestr("direction.0.npy", _npy_header((67108864,)) + bytes(64))
    _forbid(monkeypatch, np.lib.format, "read_array")
    for name in ("big.npy", "big.npz"):
        with pytest.raises(UserError, match=f"{name}: declares 23,040 values, more than the 19,584 a steering "
                                            "vector for this model can hold"):
            load_vector(tmp_path / name, max_values=CAP, name=name)
    for name in ("liar.npy", "liar.npz"):
        for cap in (CAP, None):  # an .npy holds its data uncompressed: a header cannot declare more, ever
            with pytest.raises(UserError, match="header declares 268,435,456 bytes of data, more than the file"):
                load_vector(tmp_path / name, max_values=cap, name=name)
    monkeypatch.undo()
    assert load_vector(tmp_path / "big.npy", max_values=max_values_for(40, 576)).layers == list(range(40))
    assert load_vector(tmp_path / "big.npz").layers == list(range(40))  # no cap: only the generic one


def test_safetensors_header_padded_with_metadata_is_refused_before_the_tensors(tmp_path, monkeypatch):
    """The attack: a preset padded with 8 MB of metadata (it was stored with every run that used it)."""
    import safetensors.torch

    vec = SteeringVector({i: torch.randn(576) for i in range(30)}, "llama", "confidence")
    padded = SteeringVector(vec.directions, "llama", "confidence", {"pad": "x" * (8 * MB)})
    path = save_vector(padded, tmp_path / "confidence.safetensors")
    middling = save_vector(SteeringVector(vec.directions, "llama", "c", {"pad": "x" * (100 * 1024)}),
                           tmp_path / "middling.safetensors")
    _forbid(monkeypatch, safetensors.torch, "load")
    with pytest.raises(UserError, match=r"8,[\d,]+ bytes is too large for a steering vector for this model"):
        load_vector(path, max_values=CAP)  # a server's cap: by the file's size already
    with pytest.raises(UserError, match=r"safetensors header is 8,[\d,]+ bytes; a vector's header may be at "
                                        r"most 1,048,576"):
        load_vector(path)  # no cap: by the header's size
    for cap in (CAP, None):
        with pytest.raises(UserError, match=r"metadata is 10.,\d+ characters; a vector's metadata may be at most "
                                            "65,536"):
            load_vector(middling, max_values=cap)
    # The same check guards bytes read back from the session log.
    with pytest.raises(UserError, match="a vector's header may be at most"):
        SteeringVector.from_bytes(path.read_bytes(), "stored vector")


def test_safetensors_shapes_are_checked_from_the_header(tmp_path, monkeypatch):
    import safetensors.torch

    header = json.dumps({"direction.0": {"dtype": "F32", "shape": [67108864], "data_offsets": [0, 268435456]}})
    raw = struct.pack("<Q", len(header)) + header.encode() + bytes(64)
    (tmp_path / "huge.safetensors").write_bytes(raw)
    _forbid(monkeypatch, safetensors.torch, "load")
    _forbid(monkeypatch, Path, "read_bytes")
    with pytest.raises(UserError, match="declares 67,108,864 values, more than the 19,584"):
        load_vector(tmp_path / "huge.safetensors", max_values=CAP)


def test_pt_zip_bomb_and_legacy_pickles_are_refused_before_torch_load(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt"
    _zip_bomb(bomb, "archive/data/0", b"", 64 * MB)
    legacy = tmp_path / "legacy.pt"
    torch.save({"direction.0": torch.ones(8)}, legacy, _use_new_zipfile_serialization=False)
    _forbid(monkeypatch, torch, "load")
    with pytest.raises(UserError, match=r"bomb\.pt: unpacks to 67,108,864 bytes; a steering vector for this model "
                                        "may take at most"):
        load_vector(bomb, max_values=CAP)
    with pytest.raises(UserError, match="refused or unreadable .pt file: only the zip format"):
        load_vector(legacy, max_values=CAP)
    monkeypatch.undo()
    assert load_vector(legacy).layers == [0]  # a local user's old file still loads without a cap
    torch.save(torch.zeros(40, 576), tmp_path / "big.pt")
    with pytest.raises(UserError, match="declares 23,040 values"):
        load_vector(tmp_path / "big.pt", max_values=CAP)


def test_gguf_shapes_and_counts_are_checked_before_the_data(tmp_path, monkeypatch):
    big = save_vector(SteeringVector({i: torch.ones(576) for i in range(40)}, "llama"), tmp_path / "big.gguf")
    ok = save_vector(SteeringVector({i: torch.ones(576) for i in range(30)}, "llama"), tmp_path / "ok.gguf")

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    # One key whose array declares 260,000 empty strings (2 MB): the reader made an object per item.
    items = 260_000
    strings = s("junk") + struct.pack("<IIQ", 9, 8, items) + struct.pack("<Q", 0) * items
    arch = s("general.architecture") + struct.pack("<I", 8) + s("controlvector")
    (tmp_path / "keys.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + arch + strings)
    (tmp_path / "counts.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40))
    _forbid(monkeypatch, files, "checked_direction")
    with pytest.raises(UserError, match="declares 23,040 values, more than the 19,584"):
        load_vector(big, max_values=CAP)
    import gguf
    _forbid(monkeypatch, gguf, "GGUFReader")
    with pytest.raises(UserError, match="metadata declares more than 4,096 array items"):
        load_vector(tmp_path / "keys.gguf", max_values=CAP)
    with pytest.raises(UserError, match="declares 1,099,511,627,776 tensors"):
        load_vector(tmp_path / "counts.gguf")
    monkeypatch.undo()
    assert load_vector(ok, max_values=CAP).layers == list(range(30))


def test_a_file_larger_than_its_model_could_need_is_refused_by_size(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((1000, 576), np.float32))  # 2.3 MB
    with pytest.raises(UserError, match=r"v\.npy: 2,304,128 bytes is too large for a steering vector for this model "
                                        r"\(limit 2,\d+,\d+ bytes\)"):
        load_vector(path, max_values=CAP, name="v.npy")


def test_errors_name_the_file_by_its_display_name_never_the_server_path(tmp_path):
    folder = tmp_path / "gradio" / "4f1c0ffee" / "private"
    folder.mkdir(parents=True)
    cases = {
        "junk.gguf": (b"GGUFnot really", "not a readable GGUF"),
        "junk.safetensors": (b"\x10" + bytes(7) + b"{not json", "not a readable safetensors"),
        "junk.pt": (b"PK\x03\x04 broken", "refused or unreadable .pt"),
        "junk.npy": (b"\x93NUMPY\x09\x00", "refused or unreadable numpy"),
        "junk.npz": (b"PK\x03\x04 broken", "refused or unreadable numpy"),
        "v.txt": (b"1 2 3", "unknown vector format"),
    }
    for name, (data, message) in cases.items():
        (folder / name).write_bytes(data)
        for cap in (CAP, None):
            with pytest.raises(UserError, match=message) as err:
                load_vector(folder / name, max_values=cap, name=name)
            assert str(err.value).startswith(name) and str(tmp_path) not in str(err.value)
    with pytest.raises(UserError, match="no such vector file: gone.npy$"):
        load_vector(folder / "gone.npy", name="gone.npy")
    saved = save_vector(SteeringVector({1: torch.ones(8)}), folder / "x.safetensors")
    assert load_vector(saved, name="mine.safetensors").name == "mine.safetensors"


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors", ".pt", ".npy", ".npz"])
def test_damaged_files_under_a_cap_give_a_vector_or_one_clear_error(tmp_path, suffix):
    """A cheap pass of the fuzz test's mutations with a cap (the header checks are new code paths)."""
    rng = np.random.default_rng(0)
    vec = SteeringVector({i: torch.randn(16) for i in range(3)}, "llama")
    seed = tmp_path / f"seed{suffix}"
    if suffix in (".gguf", ".safetensors"):
        save_vector(vec, seed)
    elif suffix == ".pt":
        torch.save({f"direction.{k}": v for k, v in vec.directions.items()}, seed)
    elif suffix == ".npy":
        np.save(seed, np.stack([v.numpy() for v in vec.directions.values()]))
    else:
        np.savez(seed, **{f"direction.{k}": v.numpy() for k, v in vec.directions.items()})
    data = seed.read_bytes()
    for i in range(120):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        elif i % 3 == 1:
            for _ in range(int(rng.integers(1, 8))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        else:
            b[:8] = struct.pack("<Q", int(rng.integers(2**20, 2**63 - 1)))
        path = tmp_path / f"v{suffix}"
        path.write_bytes(bytes(b))
        try:
            back = load_vector(path, max_values=max_values_for(3, 16), name=f"v{suffix}")
        except UserError as err:
            assert str(err) and "\n" not in str(err) and str(tmp_path) not in str(err)
            continue
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in back.directions.values())


# --- 2. pair texts capped --------------------------------------------------------------------------------
def test_long_pair_texts_are_refused_before_any_model_work(tmp_path, monkeypatch):
    """The attack: 8 pairs of ~8k tokens (the server went to 22 GB). A hosted cap refuses them on reading."""
    long_text = "Wait, let me check that again. " * 1300  # ~40k characters, ~8k tokens
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"positive": long_text, "negative": "short"}) + "\n" for _ in range(8)))
    _forbid(monkeypatch, contrastive, "last_token_states")
    with pytest.raises(UserError, match=r"^pairs\.jsonl:1: the positive text is 40,300 characters; the limit is "
                                        r"4,000 characters per text$"):
        contrastive.read_pairs_jsonl(path, max_chars=4000, name="pairs.jsonl")
    with pytest.raises(UserError, match="pairs:2: the negative text is 40,300 characters"):
        contrastive.parse_pair({"positive": "a", "negative": long_text}, "pairs:2", max_chars=4000)
    assert len(contrastive.read_pairs_jsonl(path)) == 8  # no cap: the CLI reads them (and truncates, below)


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """A tiny Llama whose context is 64 positions."""
    path = build_tiny_model("llama", tmp_path_factory.mktemp("ctx64"), max_positions=64)
    return load_model(str(path), device="cpu", dtype="float32")


def test_long_texts_are_read_up_to_the_context_keeping_their_end(short_context, monkeypatch):
    lm = short_context
    words = "The quick brown fox jumps over the lazy dog while we think about the answer. Wait, let me check."
    long_texts = [f"{i} {words * 600} end {i}" for i in range(16)]  # ~8k tokens each
    assert len(lm.tokenizer(long_texts[0])["input_ids"]) > 8000
    shapes = []
    handle = lm.model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs.get("input_ids", *args[:1]).shape)), with_kwargs=True)
    monkeypatch.setattr(contrastive, "BATCH_TOKENS", 256)
    states = contrastive.last_token_states(lm, long_texts, [1, 2], batch_size=16)
    assert shapes and all(t <= 64 and rows * t <= 256 for rows, t in shapes)  # 4 rows of 64 at most
    assert sum(rows for rows, _ in shapes) == 16
    # Each state is the state of the text's last 64 tokens, read alone.
    for i in (0, 7, 15):
        ids = lm.tokenizer(long_texts[i])["input_ids"][-64:]
        with torch.no_grad():
            hidden = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in (1, 2):  # hidden_states[4], the last layer's, has the final norm applied
            torch.testing.assert_close(states[layer][i], hidden[layer + 1][0, -1], atol=1e-4, rtol=1e-4)
    # The generic cap applies under a longer context too; compute_vector goes through the same path.
    monkeypatch.setattr(contrastive, "MAX_CONTEXT_TOKENS", 48)
    shapes.clear()
    pairs = [contrastive.Pair(long_texts[i], long_texts[i + 1]) for i in range(0, 8, 2)]
    contrastive.compute_vector(lm, pairs, [1, 2], "mean_diff")
    handle.remove()
    assert shapes and max(t for _, t in shapes) == 48


def test_context_limit_and_truncation_keep_a_bos():
    config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(max_position_embeddings=8192))
    assert contrastive.context_limit(SimpleNamespace(model=SimpleNamespace(config=config))) == 4096

    def tok(text):
        return {"input_ids": [1] + [100 + len(w) for w in text.split()]}
    tok.bos_token_id = 1
    text = " ".join("x" * (i % 7 + 1) for i in range(50))
    assert contrastive.text_ids(tok, text, 10) == [1] + tok(text)["input_ids"][-9:]
    assert contrastive.text_ids(tok, "a b", 10) == [1, 101, 101]


# --- 3. question sets checked before they are built ----------------------------------------------------
def test_a_huge_generated_set_is_refused_before_it_is_built(monkeypatch):
    """The attack: 'yesno:3000000' was generated (38 s, +780 MB) before the 20-question cap was checked."""
    _forbid(monkeypatch, questions, "yesno_questions")
    _forbid(monkeypatch, questions, "word_problems")
    for spec in ("yesno:3000000", "wordproblems:21"):
        with pytest.raises(UserError, match=r"asks for [\d,]+ questions; at most 20 are allowed here"):
            questions.load_questions(spec, max_count=20)
    monkeypatch.undo()
    assert len(questions.load_questions("yesno", max_count=20)) == 20  # no size: the default, capped
    assert len(questions.load_questions("yesno:20", max_count=20, allow_files=False)) == 20


def test_a_long_question_file_is_refused_while_it_is_read(tmp_path):
    path = tmp_path / "q.jsonl"
    line = json.dumps({"question": "Is 7 a prime number? " * 2, "answer": "Yes"}) + "\n"
    with open(path, "w") as f:
        for i in range(400_000):  # ~26 MB
            f.write(line if i != 21 else "not json\n")  # line 22: past the cap, never parsed
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"^q\.jsonl: more than 20 questions; at most 20 are allowed here$"):
            questions.load_questions(str(path), max_count=20, name="q.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size > 20 * MB and peak < 2 * MB
    exact = tmp_path / "exact.jsonl"
    exact.write_text(line * 20)
    assert len(questions.read_questions_jsonl(exact, max_count=20)) == 20  # exactly the cap is fine


def test_visitors_cannot_make_the_server_read_its_files(tmp_path, monkeypatch):
    """The attack: '/etc/passwd' and a server path typed into the Questions box were read."""
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"question": "the password is hunter2", "answer": "Yes"}) + "\n")
    _forbid(monkeypatch, questions, "iter_jsonl")
    _forbid(monkeypatch, Path, "exists")
    _forbid(monkeypatch, Path, "is_file")
    for spec in ("/etc/passwd", str(secret), "../../etc/passwd", "yesno.jsonl", "nope:3"):
        with pytest.raises(UserError, match="the questions must be a generated set: 'yesno', 'wordproblems'") as err:
            questions.load_questions(spec, max_count=20, allow_files=False)
        assert "hunter2" not in str(err.value) and "root:" not in str(err.value)
    monkeypatch.undo()
    assert [q.question for q in questions.load_questions(str(secret))] == ["the password is hunter2"]  # the CLI


# --- 4. a vector's identity covers its metadata ----------------------------------------------------------
def test_content_hash_covers_metadata_and_is_canonical():
    d = {i: torch.randn(16, generator=torch.Generator().manual_seed(i)) for i in range(3)}
    preset = SteeringVector(d, "llama", "confidence", {"method": "mean_diff", "source": "preset:confidence"})
    forged = SteeringVector(d, "llama", "confidence", {"method": "mean_diff", "source": "evil", "pad": "x"})
    hashes = {v.content_hash() for v in (preset, forged, SteeringVector(d, "qwen2", "confidence", preset.metadata),
                                          SteeringVector(d, "llama", "other", preset.metadata))}
    assert len(hashes) == 4
    # Canonical: insertion order of layers or metadata keys does not matter, nor a round trip through bytes.
    reordered = SteeringVector(dict(reversed(list(d.items()))), "llama", "confidence",
                               dict(reversed(list(preset.metadata.items()))))
    back = SteeringVector.from_bytes(reordered.to_bytes())
    assert reordered.content_hash() == preset.content_hash() == back.content_hash()
    # A header written in another key order (any safetensors writer) reads back to the same hash.
    from safetensors.torch import save
    meta = preset.stored_metadata()
    other_order = save({f"direction.{k}": d[k] for k in (2, 0, 1)}, metadata=dict(sorted(meta.items(), reverse=True)))
    assert SteeringVector.from_bytes(other_order).content_hash() == preset.content_hash()


def test_a_forged_copy_of_a_preset_is_stored_beside_it(bundled, tmp_path):
    """The attack: a copy with the preset's tensors and other metadata was stored under the preset's hash,
    and the first stored copy's metadata won for every later run."""
    from steer_ui.vectors.presets import resolve_vector

    preset = resolve_vector("confidence", "smollm2-135m")
    forged = SteeringVector(dict(preset.directions), preset.model_hint, preset.name,
                            {**preset.metadata, "source": "forged", "suggested_band": "0-1"})
    store = Store(str(tmp_path / "log.sqlite"))
    session = store.new_session("cli")
    run_ids = []
    for vector in (forged, preset):  # the forged copy first: before, the preset's runs then got its metadata
        settings = RunSettings("Is 7 prime?", rows=steered(vector, (2.0,)), max_new_tokens=2, probe_every=0)
        recorder = RunRecorder(store, session, bundled, settings, flush_s=0.1)
        for ev in run(bundled, settings):
            recorder(ev)
        recorder.close()
        assert recorder.error is None
        run_ids.append(recorder.run_id)
    stored = [store.get_run(r).streams[1].vector_hash for r in run_ids]
    assert stored == [forged.content_hash(), preset.content_hash()] and stored[0] != stored[1]
    forged_back, preset_back = (store.vector(h) for h in stored)
    assert forged_back.metadata["source"] == "forged" and preset_back.metadata["source"] == preset.metadata["source"]
    assert preset_back.metadata["suggested_band"] == preset.metadata["suggested_band"]
    assert [v.content_hash() for v in (forged_back, preset_back)] == stored  # stored copies keep their identity


# --- 5. two processes converting the bundled model at once ----------------------------------------------
def test_conversion_uses_the_copy_another_process_finished_first(tmp_path, monkeypatch):
    """The second conversion died with 'OSError: Directory not empty' on its rename; now it uses the first's."""
    import transformers

    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"stand-in")
    fake = SimpleNamespace(save_pretrained=lambda folder: (Path(folder) / "tokenizer.json").write_text("{}"))
    monkeypatch.setattr(transformers, "AutoTokenizer", SimpleNamespace(from_pretrained=lambda *a, **k: fake))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", SimpleNamespace(from_pretrained=lambda *a, **k: fake))
    calls = []

    def save(model, folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps({"by": len(calls)}))
        calls.append(folder)
        if len(calls) == 1:  # the other process converts and renames while this one is between the two steps
            assert loading._convert_gguf(gguf_file, tmp_path / "cache") == target

    monkeypatch.setattr(loading, "_save_dequantized", save)
    target = tmp_path / "cache" / "converted" / loading._gguf_cache_key(gguf_file)
    assert loading._convert_gguf(gguf_file, tmp_path / "cache") == target
    assert len(calls) == 2 and json.loads((target / "config.json").read_text()) == {"by": 1}  # the other's
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary folder left
    # A failed rename with no finished copy there is still an error.
    def replace(src, dst):
        raise OSError(39, "Directory not empty")

    shutil.rmtree(target)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Directory not empty"):
        loading._convert_gguf(gguf_file, tmp_path / "cache")


# --- 6. errors that disclosed internals -------------------------------------------------------------------
def test_database_urls_are_shown_without_their_password():
    assert display_url("postgresql://bob:s3cret@db.example:5432/runs") == "postgresql://bob:***@db.example:5432/runs"
    assert display_url("sqlite:////data/runs.sqlite") == "sqlite:////data/runs.sqlite"
    for url in ("postgresql+nodriver://bob:s3cret@db/runs", "bob:s3cret@://x"):
        with pytest.raises(UserError, match="cannot use database") as err:
            Store(url)
        assert "s3cret" not in str(err.value)


def _read_only(store: Store) -> None:
    """From now on the store's connections may not write (as a read-only file or a full disk would)."""
    event.listen(store.engine, "connect", lambda conn, _: conn.execute("PRAGMA query_only=1"))
    store.engine.dispose()


def test_an_unwritable_session_log_is_one_clear_error(bundled, tmp_path):
    """The attack surfaced a raw sqlite3.OperationalError when the log could not be written before a run."""
    db = tmp_path / "log.sqlite"
    store = Store(str(db))
    session = store.new_session("browser")
    _read_only(store)
    with pytest.raises(UserError, match=r"^cannot write the session log: attempt to write a readonly database$") as err:
        store.new_session("browser")
    assert str(tmp_path) not in str(err.value)
    # The recorder keeps reporting through .error (the run itself goes on).
    settings = RunSettings("Is 7 prime?", max_new_tokens=2, probe_every=0)
    recorder = RunRecorder(store, session, bundled, settings, flush_s=0.1)
    for ev in run(bundled, settings):
        recorder(ev)
    recorder.close()
    assert isinstance(recorder.error, UserError) and "cannot write the session log" in str(recorder.error)
    # Reading a log that is no longer a database.
    broken = Store(str(tmp_path / "other.sqlite"))
    broken.engine.dispose()
    (tmp_path / "other.sqlite").write_bytes(b"not a database" * 1000)
    for wal in tmp_path.glob("other.sqlite-*"):
        wal.unlink()
    with pytest.raises(UserError, match=r"^cannot read the session log: file is not a database$"):
        broken.list_runs()
    assert store.list_runs() == []  # the read-only log still reads
