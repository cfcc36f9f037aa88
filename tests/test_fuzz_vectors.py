"""Vector loaders on damaged files (Hypothesis): every case is a vector or one clear UserError, never a
crash, another exception type, or a hang. Uploads in the dashboard go through these same loaders."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steer_ui.errors import UserError
from steer_ui.vectors.files import load_vector, save_vector
from steer_ui.vectors.vector import SteeringVector

SUFFIXES = (".gguf", ".safetensors", ".pt", ".npy", ".npz")


def _valid(suffix: str, folder: Path) -> bytes:
    vec = SteeringVector({i: torch.randn(16, generator=torch.Generator().manual_seed(i)) for i in range(3)},
                         "llama", "fuzz")
    path = folder / f"seed{suffix}"
    if suffix in (".gguf", ".safetensors"):
        save_vector(vec, path)
    elif suffix == ".pt":
        torch.save({f"direction.{k}": v for k, v in vec.directions.items()}, path)
    elif suffix == ".npy":
        np.save(path, np.stack([v.numpy() for v in vec.directions.values()]))
    else:
        np.savez(path, **{f"direction.{k}": v.numpy() for k, v in vec.directions.items()})
    return path.read_bytes()


SEEDS: dict[str, bytes] = {}


@pytest.fixture(scope="module", autouse=True)
def _seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    for suffix in SUFFIXES:
        SEEDS[suffix] = _valid(suffix, folder)


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("huge-header"), st.integers(2**31, 2**63 - 1)),
    st.tuples(st.just("garbage"), st.binary(max_size=256)),
    st.tuples(st.just("nan"), st.floats(0, 1)),
)


def _mutate(data: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[: int(len(data) * arg)]
    if kind == "flip":
        b = bytearray(data)
        for where, value in arg:
            b[min(int(where * len(b)), len(b) - 1)] = value
        return bytes(b)
    if kind == "huge-header":  # a declared length far beyond the file (safetensors/npy headers, GGUF counts)
        return struct.pack("<Q", arg) + data[8:]
    if kind == "garbage":
        return arg
    # NaN: overwrite 4 bytes near the end (where the float data sits) with a float32 NaN
    b = bytearray(data)
    at = max(0, min(len(b) - 4, int(len(b) * (0.5 + arg / 2)) - 4))
    b[at:at + 4] = struct.pack("<f", float("nan"))
    return bytes(b)


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=mutation)
def test_damaged_files_give_a_vector_or_one_clear_error(suffix, how):
    data = _mutate(SEEDS[suffix], how)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"v{suffix}"
        path.write_bytes(data)
        try:
            vec = load_vector(path)
        except UserError as err:
            assert str(err) and "\n" not in str(err)  # one line, for the CLI's error: and the UI's toast
            return
        # Whatever loads is a usable vector: finite float32 directions of one size.
        assert vec.directions and len({t.numel() for t in vec.directions.values()}) == 1
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in vec.directions.values())


def test_a_pickle_payload_is_refused_without_running(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for suffix in (".pt", ".npy"):
        path = tmp_path / f"evil{suffix}"
        if suffix == ".pt":
            torch.save({"direction.0": Boom()}, path, pickle_module=pickle)
        else:
            np.save(path, np.array([Boom()], dtype=object), allow_pickle=True)
        with pytest.raises(UserError, match="refused"):
            load_vector(path)
        assert not marker.exists()
