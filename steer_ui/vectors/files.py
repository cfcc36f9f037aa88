"""Vector files: reading and writing .gguf (repeng / llama.cpp), .safetensors, .pt/.pth and .npy/.npz.

The repeng / llama.cpp GGUF format: architecture ``controlvector``, keys ``controlvector.model_hint``
and ``controlvector.layer_count``, one float32 tensor ``direction.{L}`` per layer. A .safetensors file
holds exactly ``SteeringVector.to_bytes()``. Pickles are refused, never run.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from steer_ui.errors import UserError
from steer_ui.vectors.vector import (
    LAYER_KEY,
    MAX_METADATA_CHARS,
    MAX_SAFETENSORS_HEADER_BYTES,
    SteeringVector,
    check_safetensors_header,
    checked_direction,
    header_too_large,
    too_many_values,
    vector_from,
    why,
)

MAX_VECTOR_FILE_BYTES = 512 * 1024 * 1024  # 128 layers x 1M hidden floats; real vectors are KBs to MBs
BYTES_PER_VALUE = 8  # float64, the widest float a vector file may hold
FILE_SLACK_BYTES = 2 * 1024 * 1024  # headers, names, alignment and metadata around the values
SLACK_LAYERS = 4  # a vector may carry a few layers more than the model has (they are not steered)
MAX_ARCHIVE_MEMBERS = 4096  # .npz / .pt members; a vector has one array per layer at most
MAX_GGUF_TENSORS = 4096
MAX_GGUF_KEYS = 256  # a control vector has 2-3 keys
MAX_GGUF_ARRAY_ITEMS = 4096  # summed over its keys' arrays
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def max_values_for(n_layers: int, hidden_size: int) -> int:
    """The ``max_values`` for a model: its layers (plus ``SLACK_LAYERS``) x its hidden size."""
    return (n_layers + SLACK_LAYERS) * hidden_size


def _byte_cap(max_values: int | None) -> int:
    """The most bytes a vector file (or an archive's unpacked members) may hold."""
    if max_values is None:
        return MAX_VECTOR_FILE_BYTES
    return min(MAX_VECTOR_FILE_BYTES, max_values * BYTES_PER_VALUE + FILE_SLACK_BYTES)


def _check_values(count: int, where: str, max_values: int | None) -> None:
    if max_values is not None and count > max_values:
        raise UserError(too_many_values(where, count, max_values))


_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _check_gguf_counts(path: Path, where: str) -> None:
    """Walk a GGUF's fixed header and its keys without building anything: the reader makes Python objects
    for every key, array item and tensor a file declares, so absurd counts are refused before it runs.
    Anything malformed is left for the reader to report."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            return
        order = "big" if int.from_bytes(head[4:8], "little") & 0xFFFF == 0 else "little"  # as the reader decides

        def number(size: int) -> int:
            raw = f.read(size)
            if len(raw) < size:
                raise EOFError
            return int.from_bytes(raw, order)

        tensors, keys = int.from_bytes(head[8:16], order), int.from_bytes(head[16:24], order)
        if tensors > MAX_GGUF_TENSORS or keys > MAX_GGUF_KEYS:
            raise UserError(f"{where}: declares {tensors:,} tensors and {keys:,} keys; a control vector may have "
                            f"at most {MAX_GGUF_TENSORS:,} tensors and {MAX_GGUF_KEYS} keys")
        items = text = 0

        def skip_text() -> None:
            nonlocal text
            length = number(8)
            text += length
            if text > MAX_METADATA_CHARS:
                raise UserError(f"{where}: its metadata holds more than {MAX_METADATA_CHARS:,} bytes of text; a "
                                "control vector's is a few bytes (its model hint)")
            f.seek(length, os.SEEK_CUR)

        def skip_value(kind: int) -> None:
            nonlocal items
            if kind in _GGUF_SCALAR_BYTES:
                f.seek(_GGUF_SCALAR_BYTES[kind], os.SEEK_CUR)
            elif kind == _GGUF_STRING:
                skip_text()
            elif kind == _GGUF_ARRAY:
                item_kind, count = number(4), number(8)
                items += count
                if items > MAX_GGUF_ARRAY_ITEMS:
                    raise UserError(f"{where}: its metadata declares more than {MAX_GGUF_ARRAY_ITEMS:,} array items; "
                                    "a control vector has none")
                if item_kind in _GGUF_SCALAR_BYTES:
                    f.seek(_GGUF_SCALAR_BYTES[item_kind] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip_value(item_kind)
            else:
                raise EOFError  # an unknown type: the reader will say so

        try:
            for _ in range(keys):
                skip_text()  # the key's name
                skip_value(number(4))
        except (EOFError, RecursionError, ValueError, OverflowError, OSError):
            return  # a length past what a file offset holds, a seek the OS refuses: the reader reports it


def read_repeng_gguf(path: Path, where: str, max_values: int | None) -> SteeringVector:
    import gguf

    _check_gguf_counts(path, where)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises many types on malformed input
        raise UserError(f"{where}: not a readable GGUF file ({type(err).__name__}: {why(err)})") from None

    def text_field(key: str) -> str:
        f = reader.get_field(key)
        return "" if f is None or not f.parts else bytes(f.parts[-1]).decode("utf-8", "replace")

    arch = text_field("general.architecture")
    if arch != "controlvector":
        raise UserError(f"{where}: GGUF architecture is {arch[:60]!r}, expected 'controlvector' (a model file?)")
    wanted = [(int(m.group(1)), t) for t in reader.tensors if (m := re.fullmatch(r"direction\.(\d+)", t.name))]
    _check_values(sum(int(t.n_elements) for _, t in wanted), where, max_values)  # declared, before any data
    directions = {layer: checked_direction(layer, np.array(tensor.data), where) for layer, tensor in wanted}
    return vector_from(directions, where, text_field("controlvector.model_hint"), {})


def read_safetensors(path: Path, where: str, max_values: int | None) -> SteeringVector:
    """The header (8 bytes of length, then JSON) is read and checked first; the tensors only if it passes."""
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if MAX_SAFETENSORS_HEADER_BYTES < header_len <= path.stat().st_size - 8:
            raise UserError(header_too_large(where, header_len))
        header_bytes = f.read(min(header_len, MAX_SAFETENSORS_HEADER_BYTES)) if header_len > 0 else b""
    try:
        header = json.loads(header_bytes)
    except Exception as err:  # noqa: BLE001 - a damaged header is "unreadable", whatever raised
        raise UserError(f"{where}: not a readable safetensors file ({why(err)})") from None
    if isinstance(header, dict):
        check_safetensors_header(header, where, max_values)
    return SteeringVector.from_bytes(path.read_bytes(), where, name=Path(where).name, max_values=max_values)


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


def _check_members(zf: zipfile.ZipFile, where: str, max_values: int | None) -> list[zipfile.ZipInfo]:
    """An archive's members, refused by count and by their declared unpacked sizes before any is read."""
    infos = zf.infolist()
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise UserError(f"{where}: holds {len(infos):,} files; a vector archive may hold at most "
                        f"{MAX_ARCHIVE_MEMBERS:,}")
    unpacked, cap = sum(i.file_size for i in infos), _byte_cap(max_values)
    if unpacked > cap:
        raise UserError(f"{where}: unpacks to {unpacked:,} bytes; a steering vector"
                        f"{' for this model' if max_values is not None else ''} may take at most {cap:,}")
    return infos


def read_torch(path: Path, where: str, max_values: int | None) -> SteeringVector:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.

    A zip (what ``torch.save`` writes) is checked by its members' unpacked sizes first; with ``max_values``
    the legacy non-zip format, whose storages' sizes only the pickle declares, is refused."""
    refused = f"{where}: refused or unreadable .pt file"
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            with zipfile.ZipFile(path) as zf:
                _check_members(zf, where, max_values)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged zip raises many types
        raise UserError(f"{refused}: {why(err)}") from None
    if not is_zip and max_values is not None:
        raise UserError(f"{refused}: only the zip format torch.save writes (torch 1.6 and later) is accepted here")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickles and damaged files raise many types: all are refused
        raise UserError(f"{refused} (only plain tensors are accepted, never pickled code): {why(err)}") from None
    if isinstance(obj, torch.Tensor):
        _check_values(obj.numel(), where, max_values)
        return vector_from(_from_matrix(obj, where), where, "", {})
    if isinstance(obj, dict):
        _check_values(sum(v.numel() for v in obj.values() if isinstance(v, torch.Tensor)), where, max_values)
        return vector_from(_from_mapping(obj, where), where, "", {})
    raise UserError(f"{where}: expected a tensor or a dict of layer tensors, got {type(obj).__name__}")


def _npy_header(f, where: str, available: int) -> tuple[tuple[int, ...], np.dtype]:
    """An .npy stream's shape and dtype from its header, checked against the bytes that follow it."""
    fmt = np.lib.format
    start = f.tell()
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    if dtype.hasobject:
        raise UserError(f"{where}: refused or unreadable numpy file: it holds pickled Python objects, "
                        "which are never loaded")
    data_bytes = math.prod(shape) * dtype.itemsize
    if data_bytes > available - (f.tell() - start):
        raise ValueError(f"its header declares {data_bytes:,} bytes of data, more than the file holds")
    return shape, dtype


def read_numpy(path: Path, where: str, max_values: int | None) -> SteeringVector:
    """.npy / .npz (told apart by their first bytes, as ``numpy.load`` does) without pickles; each array's
    header (and each .npz member's unpacked size) is checked before its data is read."""
    refused = f"{where}: refused or unreadable numpy file"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:4] in ZIP_MAGIC:
            arrays: dict | np.ndarray = {}
            count = 0
            with zipfile.ZipFile(path) as zf:
                for info in _check_members(zf, where, max_values):
                    member = f"{where} ({info.filename[:60]!r})"
                    with zf.open(info) as m:
                        shape, _ = _npy_header(m, member, info.file_size)
                    count += math.prod(shape)
                _check_values(count, where, max_values)
                for info in zf.infolist():
                    with zf.open(info) as m:
                        arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(m, allow_pickle=False)
        elif magic == np.lib.format.MAGIC_PREFIX:
            with open(path, "rb") as f:
                shape, _ = _npy_header(f, where, path.stat().st_size)
                _check_values(math.prod(shape), where, max_values)
                f.seek(0)
                arrays = np.lib.format.read_array(f, allow_pickle=False)
        else:
            raise ValueError("not an .npy or .npz file (and pickles are never loaded)")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy's header parser and zipfile raise many types
        raise UserError(f"{refused}: {why(err)}") from None
    if isinstance(arrays, dict):
        return vector_from(_from_mapping(arrays, where), where, "", {})
    return vector_from(_from_matrix(arrays, where), where, "", {})


READERS = {".gguf": read_repeng_gguf, ".safetensors": read_safetensors, ".pt": read_torch, ".pth": read_torch,
           ".npy": read_numpy, ".npz": read_numpy}


def load_vector(path: str | os.PathLike[str], max_values: int | None = None, name: str | None = None) -> SteeringVector:
    """Read a vector file (.gguf, .safetensors, .pt, .npy, .npz); UserError on anything wrong.

    ``max_values`` (``max_values_for(n_layers, hidden_size)`` of the model it is for) refuses a file whose
    headers declare more values than that, before any array data is read or unpacked, and a file larger
    than those values could take; None leaves only the generic ``MAX_VECTOR_FILE_BYTES``. ``name`` is how
    errors and the vector name the file (a server passes an upload's own file name, so that no message
    shows where it keeps its files); by default the path.
    """
    p = Path(path).expanduser()
    where = name if name is not None else str(p)
    try:
        if not p.is_file():
            raise UserError(f"no such vector file: {where}")
        size, cap = p.stat().st_size, _byte_cap(max_values)
        if size > cap:
            raise UserError(f"{where}: {size:,} bytes is too large for a steering vector"
                            f"{' for this model' if max_values is not None else ''} (limit {cap:,} bytes)")
        reader = READERS.get(p.suffix.lower())
        if reader is None:
            raise UserError(f"{where}: unknown vector format {p.suffix[:20]!r}: use {', '.join(READERS)}")
        return reader(p, where, max_values)
    except UserError as err:
        if name is None:
            raise
        raise UserError(_without_paths(str(err), p, where)) from None
    except OSError as err:  # unreadable: permissions, a folder renamed away meanwhile, ...
        raise UserError(f"{where}: cannot read the file ({err.strerror or type(err).__name__})") from None


def _without_paths(message: str, path: Path, where: str) -> str:
    """``message`` with ``path`` (as given or resolved) and its folder replaced: what a library's own error
    text might quote, and a server must not show."""
    for full in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        message = message.replace(full, where)
    for folder in sorted({str(path.parent), str(path.resolve().parent)}, key=len, reverse=True):
        if len(folder) > 1:
            message = message.replace(folder, "...")
    return message


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
