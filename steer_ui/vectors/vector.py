"""The steering vector: ``{layer: direction}``, its arithmetic, and its bytes.

Layer L is the output of decoder block L (``hidden_states[L + 1]``), 0-based, as in repeng and
llama.cpp. A vector's canonical bytes are safetensors (tensors ``direction.{L}``, float32, and the
metadata as strings): ``to_bytes``/``from_bytes`` are the one writer and reader, used by .safetensors
files, the session log's stored copies and the dashboard's History downloads. Other file formats
are in ``steer_ui.vectors.files``.
"""


from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steer_ui.errors import UserError
from steer_ui.vectors.layers import format_layers

LAYER_KEY = re.compile(r"^(?:direction|layer|layers)?\.?(\d+)$")
MAX_SAFETENSORS_HEADER_BYTES = 1024 * 1024  # a vector's header is a few KB: tensor entries and its metadata
MAX_METADATA_CHARS = 64 * 1024  # 30 layers of separation stats take ~6 KB; every run's log keeps a copy
MAX_MODEL_HINT_CHARS = 64  # the log's column; repeng writes the architecture ("llama", "qwen2")


@dataclass(eq=False)  # compared by identity: tensors have no single truth value
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

    def stored_metadata(self) -> dict[str, str]:
        """The metadata ``to_bytes`` writes: the vector's own, then its name and model hint, then what is
        derived from the directions (hidden size, layers, per-layer norms), all as strings."""
        meta = {**self.metadata, "name": self.name, "model_hint": self.model_hint,
                "hidden_size": str(self.hidden_size), "layers": json.dumps(self.layers),
                "norms": json.dumps({str(k): round(float(self._stored(k).norm()), 6) for k in self.layers})}
        return {str(k): str(v) for k, v in meta.items()}

    def _stored(self, layer: int) -> torch.Tensor:
        return self.directions[layer].detach().to("cpu", torch.float32).contiguous()

    def content_hash(self) -> str:
        """The vector's identity: a hash of everything ``to_bytes`` stores, in a canonical order (sorted
        JSON of the layers, each tensor's dtype and shape, the name, model hint and metadata; then each
        layer's float32 bytes). Two copies that differ only in their metadata or name are different
        vectors; a copy read back from ``to_bytes`` (or a .safetensors file, whatever its header's key
        order) has the same hash as long as it keeps its name."""
        head = {"format": "steer-ui vector 2", "metadata": self.stored_metadata(),
                "tensors": [[layer, "float32", list(self._stored(layer).shape)] for layer in self.layers]}
        h = hashlib.sha256(json.dumps(head, sort_keys=True, ensure_ascii=False).encode())
        for layer in self.layers:
            h.update(self._stored(layer).numpy().tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The canonical bytes: safetensors, one float32 tensor ``direction.{L}`` per layer, with the name,
        model hint, metadata and per-layer norms as string metadata."""
        from safetensors.torch import save

        tensors = {f"direction.{k}": self._stored(k) for k in self.layers}
        return save(tensors, metadata=self.stored_metadata())

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "vector", name: str | None = None,
                   max_values: int | None = None) -> SteeringVector:
        """The vector ``to_bytes`` wrote (or any safetensors of ``direction.{L}`` tensors); UserError if not.

        ``name`` (a file's name) wins over the stored one. The header is checked before any tensor is
        built (``check_safetensors_header``): its size, its metadata's size and, with ``max_values``, the
        number of values its tensors declare.
        """
        from safetensors.torch import load

        header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if MAX_SAFETENSORS_HEADER_BYTES < header_len <= len(data) - 8:
            raise UserError(header_too_large(where, header_len))
        try:
            # safetensors reads metadata only from files; the header is 8 bytes of length, then JSON.
            header = json.loads(data[8:8 + header_len]) if 8 < 8 + header_len <= len(data) else None
        except Exception as err:  # noqa: BLE001 - a damaged file is "unreadable", whatever raised
            raise UserError(f"{where}: not a readable safetensors file ({why(err)})") from None
        if isinstance(header, dict):
            check_safetensors_header(header, where, max_values)
        try:
            tensors = load(data)
        except Exception as err:  # noqa: BLE001 - a damaged file is "unreadable", whatever raised
            raise UserError(f"{where}: not a readable safetensors file ({why(err)})") from None
        meta = dict((header or {}).get("__metadata__") or {})
        directions = {int(m.group(1)): checked_direction(int(m.group(1)), t, where)
                      for key, t in tensors.items() if (m := LAYER_KEY.fullmatch(key))}
        stored_name = meta.pop("name", "")
        vector = vector_from(directions, where, meta.pop("model_hint", ""), meta)
        vector.name = name if name is not None else stored_name
        return vector

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
            raise UserError(f"the vector's layers ({format_layers(self.layers)}) are all beyond the model's "
                            f"{n_layers} layers (0-{n_layers - 1})")
        for x in chosen:
            if not 0 <= x < n_layers:
                raise UserError(f"layer {x} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
            if x not in self.directions:
                raise UserError(f"layer {x} is not in the vector (it has layers {format_layers(self.layers)})")
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


def why(err: BaseException) -> str:
    """The first line of an exception's message (some have none), for a one-line error."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def header_too_large(where: str, header_len: int) -> str:
    return (f"{where}: its safetensors header is {header_len:,} bytes; a vector's header may be at most "
            f"{MAX_SAFETENSORS_HEADER_BYTES:,}")


def too_many_values(where: str, count: int, max_values: int) -> str:
    return (f"{where}: declares {count:,} values, more than the {max_values:,} a steering vector for this "
            "model can hold (its layers x hidden size)")


def check_safetensors_header(header: dict, where: str, max_values: int | None = None) -> None:
    """Refuse, from the parsed header alone, metadata over ``MAX_METADATA_CHARS`` and (with ``max_values``)
    tensors declaring more values than that; nothing of the tensor data has been read yet."""
    meta = header.get("__metadata__")
    if isinstance(meta, dict):
        chars = sum(len(str(k)) + len(str(v)) for k, v in meta.items())
        if chars > MAX_METADATA_CHARS:
            raise UserError(f"{where}: its metadata is {chars:,} characters; a vector's metadata may be at most "
                            f"{MAX_METADATA_CHARS:,}")
    if max_values is None:
        return
    count = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise UserError(f"{where}: not a readable safetensors file (tensor {str(key)[:60]!r} has no valid shape)")
        count += math.prod(shape)
        if count > max_values:
            raise UserError(too_many_values(where, count, max_values))


def checked_direction(layer: int, arr: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(arr)) if not isinstance(arr, torch.Tensor) else arr
    except (TypeError, ValueError, RuntimeError) as err:  # dtypes torch has no type for (longdouble, strings)
        raise UserError(f"{where}: direction for layer {layer} cannot be read as numbers ({why(err)})") from None
    if not (t.is_floating_point()):
        raise UserError(f"{where}: direction for layer {layer} has dtype {t.dtype}, expected a float type")
    t = t.detach().to(torch.float32).reshape(-1).clone()
    if t.numel() == 0:
        raise UserError(f"{where}: direction for layer {layer} is empty")
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: direction for layer {layer} contains NaN or infinite values")
    return t


def vector_from(directions: dict[int, torch.Tensor], where: str, hint: str, meta: dict[str, str]) -> SteeringVector:
    if len(hint) > MAX_MODEL_HINT_CHARS:  # it names an architecture ("llama"); the log keeps 64 characters
        raise UserError(f"{where}: its model hint is {len(hint):,} characters; a model hint names a model "
                        f"family in at most {MAX_MODEL_HINT_CHARS}")
    if not directions:
        raise UserError(f"{where}: no steering directions found (expected tensors named direction.N)")
    sizes = {t.numel() for t in directions.values()}
    if len(sizes) > 1:
        raise UserError(f"{where}: directions have different sizes {sorted(sizes)}")
    return SteeringVector(directions=directions, model_hint=hint, name=Path(where).name, metadata=meta)
