"""Vector files: reading and writing .gguf (repeng / llama.cpp), .safetensors, .pt/.pth and .npy/.npz.

The repeng / llama.cpp GGUF format: architecture ``controlvector``, keys ``controlvector.model_hint``
and ``controlvector.layer_count``, one float32 tensor ``direction.{L}`` per layer. A .safetensors file
holds exactly ``SteeringVector.to_bytes()``. Pickles are refused, never run.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from steer_ui.errors import UserError
from steer_ui.vectors.vector import LAYER_KEY, SteeringVector, checked_direction, vector_from, why

MAX_VECTOR_FILE_BYTES = 512 * 1024 * 1024  # 128 layers x 1M hidden floats; real vectors are KBs to MBs


def read_repeng_gguf(path: Path) -> SteeringVector:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises many types on malformed input
        raise UserError(f"{path}: not a readable GGUF file ({type(err).__name__}: {why(err)})") from None

    def text_field(key: str) -> str:
        f = reader.get_field(key)
        return "" if f is None or not f.parts else bytes(f.parts[-1]).decode("utf-8", "replace")

    arch = text_field("general.architecture")
    if arch != "controlvector":
        raise UserError(f"{path}: GGUF architecture is {arch!r}, expected 'controlvector' (a model file?)")
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", tensor.name)
        if m:
            directions[int(m.group(1))] = checked_direction(int(m.group(1)), np.array(tensor.data), str(path))
    return vector_from(directions, str(path), text_field("controlvector.model_hint"), {})


def read_safetensors(path: Path) -> SteeringVector:
    return SteeringVector.from_bytes(path.read_bytes(), str(path), name=path.name)


def _from_mapping(items: dict, where: str) -> dict[int, torch.Tensor]:
    directions = {}
    for key, value in items.items():
        m = LAYER_KEY.fullmatch(str(key))
        if m:
            directions[int(m.group(1))] = checked_direction(int(m.group(1)), value, where)
    return directions


def _from_matrix(arr: np.ndarray | torch.Tensor, where: str) -> dict[int, torch.Tensor]:
    if arr.ndim != 2:
        raise UserError(f"{where}: expected a 2-D array (layers x hidden) or a dict of layers, "
                        f"got shape {tuple(arr.shape)}")
    return {i: checked_direction(i, arr[i], where) for i in range(arr.shape[0])}


def read_torch(path: Path) -> SteeringVector:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickles and damaged files raise many types: all are refused
        raise UserError(f"{path}: refused or unreadable .pt file (only plain tensors are accepted, never "
                        f"pickled code): {why(err)}") from None
    if isinstance(obj, torch.Tensor):
        return vector_from(_from_matrix(obj, str(path)), str(path), "", {})
    if isinstance(obj, dict):
        return vector_from(_from_mapping(obj, str(path)), str(path), "", {})
    raise UserError(f"{path}: expected a tensor or a dict of layer tensors, got {type(obj).__name__}")


def read_numpy(path: Path) -> SteeringVector:
    """``numpy.load(allow_pickle=False)``: object arrays (pickles) are refused."""
    try:
        data = np.load(str(path), allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:  # members are read lazily: a damaged zip fails here, inside the try
                arrays: dict | np.ndarray = {k: data[k] for k in data.files}
        else:
            arrays = data
    except Exception as err:  # noqa: BLE001 - numpy's header parser and zipfile raise many types
        raise UserError(f"{path}: refused or unreadable numpy file: {why(err)}") from None
    if isinstance(arrays, dict):
        return vector_from(_from_mapping(arrays, str(path)), str(path), "", {})
    return vector_from(_from_matrix(arrays, str(path)), str(path), "", {})


READERS = {".gguf": read_repeng_gguf, ".safetensors": read_safetensors, ".pt": read_torch, ".pth": read_torch,
           ".npy": read_numpy, ".npz": read_numpy}


def load_vector(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a vector file (.gguf, .safetensors, .pt, .npy, .npz); UserError on anything wrong."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such vector file: {p}")
    size = p.stat().st_size
    if size > MAX_VECTOR_FILE_BYTES:
        raise UserError(f"{p}: {size} bytes is too large for a steering vector (limit {MAX_VECTOR_FILE_BYTES})")
    reader = READERS.get(p.suffix.lower())
    if reader is None:
        raise UserError(f"{p}: unknown vector format {p.suffix!r}: use {', '.join(READERS)}")
    return reader(p)


def save_vector(vector: SteeringVector, path: str | os.PathLike[str]) -> Path:
    """Write .gguf (repeng / llama.cpp) or .safetensors (with metadata) atomically: temp file, then rename."""
    target = Path(path).expanduser()
    writers = {".gguf": _write_gguf, ".safetensors": _write_safetensors}
    writer = writers.get(target.suffix.lower())
    if writer is None:
        raise UserError(f"cannot write {target.suffix!r}: save as .gguf or .safetensors")
    if not target.parent.is_dir():
        raise UserError(f"no such folder: {target.parent}")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        writer(vector, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a saved vector is an ordinary file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _write_gguf(vector: SteeringVector, path: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", vector.model_hint or "llama")
    writer.add_uint32("controlvector.layer_count", len(vector.directions))
    for layer in vector.layers:
        writer.add_tensor(f"direction.{layer}", vector.directions[layer].to(torch.float32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_safetensors(vector: SteeringVector, path: str) -> None:
    Path(path).write_bytes(vector.to_bytes())
