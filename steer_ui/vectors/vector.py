"""Steering vectors: ``{layer: direction}`` and the files they come in.

Layer L is the output of decoder block L (``hidden_states[L + 1]``), 0-based, as in repeng and
llama.cpp. The repeng / llama.cpp GGUF format: architecture ``controlvector``, keys
``controlvector.model_hint`` and ``controlvector.layer_count``, one float32 tensor ``direction.{L}``
per layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steer_ui.errors import UserError

MAX_VECTOR_FILE_BYTES = 512 * 1024 * 1024  # 128 layers x 1M hidden floats; real vectors are KBs to MBs
_LAYER_KEY = re.compile(r"^(?:direction|layer|layers)?\.?(\d+)$")


@dataclass
class SteeringVector:
    """One direction per layer, float32 on the CPU; the engine moves each to its layer's device."""

    directions: dict[int, torch.Tensor]
    model_hint: str = ""
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).numel())

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(str(layer).encode())
            h.update(self.directions[layer].numpy().tobytes())
        return h.hexdigest()

    def scaled(self, factor: float) -> SteeringVector:
        return SteeringVector({k: v * factor for k, v in self.directions.items()}, self.model_hint,
                              f"{factor:g}*{self.name}")

    def __mul__(self, factor: float) -> SteeringVector:
        return self.scaled(float(factor))

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self.scaled(-1.0)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return combine([(1.0, self), (1.0, other)])[0]

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return combine([(1.0, self), (-1.0, other)])[0]

    def check_against(self, n_layers: int, hidden_size: int, layers: tuple[int, ...] | None) -> list[int]:
        """The layers to steer, after checking them against the model; UserError names what is wrong."""
        if self.hidden_size != hidden_size:
            raise UserError(f"vector {self.name or ''} has hidden size {self.hidden_size} but the model has "
                            f"{hidden_size}: it was made for another model".replace("  ", " "))
        over = [x for x in self.layers if x >= n_layers]
        chosen = list(layers) if layers is not None else [x for x in self.layers if x < n_layers]
        if layers is None and over and not chosen:
            raise UserError(f"the vector's layers ({_span(self.layers)}) are all beyond the model's "
                            f"{n_layers} layers (0-{n_layers - 1})")
        for x in chosen:
            if not 0 <= x < n_layers:
                raise UserError(f"layer {x} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
            if x not in self.directions:
                raise UserError(f"layer {x} is not in the vector (it has layers {_span(self.layers)})")
        return chosen


def combine(terms: list[tuple[float, SteeringVector]]) -> tuple[SteeringVector, list[str]]:
    """sum(w * v); a layer missing from one vector counts as zero there. Returns (vector, warnings)."""
    if not terms:
        raise UserError("nothing to combine")
    sizes = {v.hidden_size for _, v in terms}
    if len(sizes) > 1:
        raise UserError(f"cannot combine vectors of different hidden sizes {sorted(sizes)}")
    hints = sorted({v.model_hint for _, v in terms if v.model_hint})
    warnings = [f"combining vectors made for different models: {', '.join(hints)}"] if len(hints) > 1 else []
    out: dict[int, torch.Tensor] = {}
    for weight, vec in terms:
        for layer, d in vec.directions.items():
            out[layer] = out.get(layer, torch.zeros_like(d)) + weight * d
    name = " + ".join(f"{w:g}*{v.name or 'vector'}" for w, v in terms)
    return SteeringVector(out, hints[0] if hints else "", name), warnings


def _span(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _checked(layer: int, arr: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr)) if not isinstance(arr, torch.Tensor) else arr
    if not (t.is_floating_point()):
        raise UserError(f"{where}: direction for layer {layer} has dtype {t.dtype}, expected a float type")
    t = t.detach().to(torch.float32).reshape(-1).clone()
    if t.numel() == 0:
        raise UserError(f"{where}: direction for layer {layer} is empty")
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: direction for layer {layer} contains NaN or infinite values")
    return t


def _finish(directions: dict[int, torch.Tensor], where: str, hint: str, meta: dict[str, str]) -> SteeringVector:
    if not directions:
        raise UserError(f"{where}: no steering directions found (expected tensors named direction.N)")
    sizes = {t.numel() for t in directions.values()}
    if len(sizes) > 1:
        raise UserError(f"{where}: directions have different sizes {sorted(sizes)}")
    return SteeringVector(directions=directions, model_hint=hint, name=Path(where).name, metadata=meta)


def read_repeng_gguf(path: Path) -> SteeringVector:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises many types on malformed input
        raise UserError(f"{path}: not a readable GGUF file ({type(err).__name__}: {_why(err)})") from None

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
            directions[int(m.group(1))] = _checked(int(m.group(1)), np.array(tensor.data), str(path))
    return _finish(directions, str(path), text_field("controlvector.model_hint"), {})


def read_safetensors(path: Path) -> SteeringVector:
    from safetensors.torch import safe_open

    directions: dict[int, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for key in f.keys():
                m = _LAYER_KEY.fullmatch(key)
                if m:
                    directions[int(m.group(1))] = _checked(int(m.group(1)), f.get_tensor(key), str(path))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file is "unreadable", whatever raised
        raise UserError(f"{path}: not a readable safetensors file ({_why(err)})") from None
    return _finish(directions, str(path), meta.get("model_hint", ""), meta)


def _from_mapping(items: dict, where: str) -> dict[int, torch.Tensor]:
    directions = {}
    for key, value in items.items():
        m = _LAYER_KEY.fullmatch(str(key))
        if m:
            directions[int(m.group(1))] = _checked(int(m.group(1)), value, where)
    return directions


def _from_matrix(arr: np.ndarray | torch.Tensor, where: str) -> dict[int, torch.Tensor]:
    if arr.ndim != 2:
        raise UserError(f"{where}: expected a 2-D array (layers x hidden) or a dict of layers, "
                        f"got shape {tuple(arr.shape)}")
    return {i: _checked(i, arr[i], where) for i in range(arr.shape[0])}


def _why(err: BaseException) -> str:
    """The first line of an exception's message (some have none), for a one-line error."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def read_torch(path: Path) -> SteeringVector:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickles and damaged files raise many types: all are refused
        raise UserError(f"{path}: refused or unreadable .pt file (only plain tensors are accepted, never "
                        f"pickled code): {_why(err)}") from None
    if isinstance(obj, torch.Tensor):
        return _finish(_from_matrix(obj, str(path)), str(path), "", {})
    if isinstance(obj, dict):
        return _finish(_from_mapping(obj, str(path)), str(path), "", {})
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
        raise UserError(f"{path}: refused or unreadable numpy file: {_why(err)}") from None
    if isinstance(arrays, dict):
        return _finish(_from_mapping(arrays, str(path)), str(path), "", {})
    return _finish(_from_matrix(arrays, str(path)), str(path), "", {})


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
    from safetensors.torch import save_file

    meta = {**vector.metadata, "model_hint": vector.model_hint, "hidden_size": str(vector.hidden_size),
            "layers": json.dumps(vector.layers),
            "norms": json.dumps({str(k): round(float(v.norm()), 6) for k, v in vector.directions.items()})}
    tensors = {f"direction.{k}": v.to(torch.float32).contiguous() for k, v in vector.directions.items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})
