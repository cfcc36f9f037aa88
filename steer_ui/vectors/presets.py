"""Shipped behaviours: contrastive templates (personas x chain-of-thought openers, repeng's recipe for
reasoning) and the vectors computed from them, found by name.

Each shipped behaviour (``assets/datasets/*.json``) pairs a positive persona with a negative one. A
pair's two texts are the same chat prompt ("work on the next problem as {persona}"), the assistant
turn opened (and the thinking block, for models that have one), then the same truncated opener: the
texts differ only in the persona, so the difference of their states is the behaviour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steer_ui.errors import UserError
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.contrastive import Pair
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.vector import SteeringVector

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DATASETS = ASSETS / "datasets"
OPENER_STRIDE = 3  # truncate each opener every 3 words: several pairs per opener, as repeng does per token


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    template: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    openers: tuple[str, ...]


def preset_names() -> list[str]:
    return sorted(p.stem for p in DATASETS.glob("*.json"))


def preset_vector_path(name: str, model_key: str) -> Path:
    """The shipped vector for preset ``name`` on model ``model_key`` (e.g. smollm2-135m)."""
    path = ASSETS / "vectors" / model_key / f"{name}.safetensors"
    if not path.is_file():
        shipped = sorted(p.stem for p in (ASSETS / "vectors" / model_key).glob("*.safetensors"))
        if not shipped:
            raise UserError(f"no preset vectors ship for {model_key}; compute one with "
                            f"'python -m steer_ui vector --preset {name} --model ...'")
        raise UserError(f"unknown preset vector {name!r} for {model_key}: choose from {', '.join(shipped)}")
    return path


def preset_vectors(model_key: str) -> list[str]:
    """Names of the shipped vectors for model ``model_key`` (only the bundled model has them)."""
    folder = ASSETS / "vectors" / model_key
    if folder.parent != ASSETS / "vectors":  # a key that is a path (a model folder) names no presets
        return []
    shipped = {p.stem for p in folder.glob("*.safetensors")}
    contrastive = [n for n in preset_names() if n in shipped]  # the behaviours' templates first
    return contrastive + sorted(shipped - set(contrastive))  # then trained ones (assets/examples)


def resolve_vector(spec: str, model_key: str) -> SteeringVector:
    """A vector as the user names it: a file path as given, or a preset name (no extension, not a file)
    of the shipped vectors for ``model_key``. A preset is named by its behaviour ('confidence')."""
    path = Path(spec).expanduser()
    if path.suffix or path.exists():
        return load_vector(path)
    vector = load_vector(preset_vector_path(spec.strip(), model_key.strip().lower()))
    vector.name = spec.strip()
    return vector


def load_template(name_or_path: str) -> Template:
    path = Path(name_or_path)
    if not path.suffix:
        path = DATASETS / f"{name_or_path}.json"
        if not path.is_file():
            raise UserError(f"unknown preset {name_or_path!r}: choose from {', '.join(preset_names())}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        t = Template(raw["name"], raw["description"], raw["template"], tuple(raw["positive"]),
                     tuple(raw["negative"]), tuple(raw["openers"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a dataset template ({type(err).__name__}: {err})") from None
    if len(t.positive) != len(t.negative) or not t.positive or not t.openers or "{persona}" not in t.template:
        raise UserError(f"{path}: needs as many positive as negative personas, some openers, "
                        "and '{persona}' in the template")
    return t


def _prompt(lm: LoadedModel, user: str) -> str:
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                       add_generation_prompt=True)
    else:
        text = f"{user}\n"
    profile = lm.profile
    # A reasoning model's chain of thought lives inside <think>: open it if the template did not.
    if profile.has_thinking and text.rfind(profile.think_open) <= text.rfind(profile.think_close):
        text += f"{profile.think_open}\n"
    return text


def build_pairs(lm: LoadedModel, template: Template) -> list[Pair]:
    pairs = []
    for pos, neg in zip(template.positive, template.negative, strict=True):
        pos_prompt = _prompt(lm, template.template.format(persona=pos))
        neg_prompt = _prompt(lm, template.template.format(persona=neg))
        for opener in template.openers:
            words = opener.split()
            for n in range(OPENER_STRIDE, len(words) + OPENER_STRIDE, OPENER_STRIDE):
                tail = " ".join(words[:n])
                pairs.append(Pair(pos_prompt + tail, neg_prompt + tail))
    return pairs
