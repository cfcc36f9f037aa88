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
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steer_ui.errors import UserError
from steer_ui.vectors.layers import format_layers

LAYER_KEY = re.compile(r"^(?:direction|layer|layers)?\.?(\d+)$")


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

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(str(layer).encode())
            h.update(self.directions[layer].numpy().tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The canonical bytes: safetensors, one float32 tensor ``direction.{L}`` per layer, with the name,
        model hint, metadata and per-layer norms as string metadata."""
        from safetensors.torch import save

        meta = {**self.metadata, "name": self.name, "model_hint": self.model_hint,
                "hidden_size": str(self.hidden_size), "layers": json.dumps(self.layers),
                "norms": json.dumps({str(k): round(float(v.norm()), 6) for k, v in self.directions.items()})}
        tensors = {f"direction.{k}": v.to(torch.float32).contiguous() for k, v in self.directions.items()}
        return save(tensors, metadata={k: str(v) for k, v in meta.items()})

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "vector", name: str | None = None) -> SteeringVector:
        """The vector ``to_bytes`` wrote (or any safetensors of ``direction.{L}`` tensors); UserError if not.

        ``name`` (a file's name) wins over the stored one.
        """
        from safetensors.torch import load

        try:
            # safetensors reads metadata only from files; the header is 8 bytes of length, then JSON.
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + header_len]) if 8 < 8 + header_len <= len(data) else None
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


def checked_direction(layer: int, arr: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr)) if not isinstance(arr, torch.Tensor) else arr
    if not (t.is_floating_point()):
        raise UserError(f"{where}: direction for layer {layer} has dtype {t.dtype}, expected a float type")
    t = t.detach().to(torch.float32).reshape(-1).clone()
    if t.numel() == 0:
        raise UserError(f"{where}: direction for layer {layer} is empty")
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: direction for layer {layer} contains NaN or infinite values")
    return t


def vector_from(directions: dict[int, torch.Tensor], where: str, hint: str, meta: dict[str, str]) -> SteeringVector:
    if not directions:
        raise UserError(f"{where}: no steering directions found (expected tensors named direction.N)")
    sizes = {t.numel() for t in directions.values()}
    if len(sizes) > 1:
        raise UserError(f"{where}: directions have different sizes {sorted(sizes)}")
    return SteeringVector(directions=directions, model_hint=hint, name=Path(where).name, metadata=meta)
