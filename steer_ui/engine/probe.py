"""The suffix probe: which token ids stand for each answer, and reading log-odds off a distribution.

Running the suffix on the live cache is the decode loop's job (it fuses the probe into a decode step);
this module only knows tokens and arithmetic, so it can be checked against a plain full forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.model.known import ModelProfile


@dataclass(frozen=True)
class Choice:
    label: str
    token_ids: tuple[int, ...]  # every variant (' Yes', 'yes', 'YES', ...) that is one token


@dataclass(frozen=True)
class ProbeSpec:
    suffix_ids: tuple[int, ...]
    close_think_ids: tuple[int, ...] | None  # closing tag + suffix, for rows still inside <think>
    choices: tuple[Choice, ...]
    every: int
    min_mass: float


@dataclass(frozen=True)
class Reading:
    logodds: float
    mass: float
    logprobs: dict[str, float]
    reliable: bool


def _variants(word: str) -> set[str]:
    forms = {word, word.lower(), word.upper(), word.capitalize(), word.title()}
    return forms | {" " + f for f in forms}


def build_choices(tokenizer, labels: tuple[str, ...]) -> tuple[Choice, ...]:
    """Map each label to the ids of its one-token variants; a label with none is a UserError."""
    choices: list[Choice] = []
    seen: dict[int, str] = {}
    for label in labels:
        label = label.strip()
        ids: set[int] = set()
        for form in sorted(_variants(label)):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and tokenizer.decode(enc).strip().lower() == label.lower():
                ids.add(int(enc[0]))
        if not ids:
            raise UserError(f"probe choice {label!r} is not a single token in this model's vocabulary; "
                            "pick a shorter word")
        for i in ids:
            if i in seen:
                raise UserError(f"probe choices {seen[i]!r} and {label!r} share the token id {i}")
            seen[i] = label
        choices.append(Choice(label, tuple(sorted(ids))))
    return tuple(choices)


def build_probe(tokenizer, profile: ModelProfile, settings: RunSettings) -> ProbeSpec:
    suffix = profile.probe_suffix if settings.probe_suffix is None else settings.probe_suffix
    suffix_ids = tuple(tokenizer.encode(suffix, add_special_tokens=False))
    close_ids = None
    if profile.has_thinking:
        # The model would keep thinking after a bare suffix: close the block the way the model itself does.
        text = f"\n{profile.think_close}\n\n{suffix.lstrip()}"
        close_ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    return ProbeSpec(suffix_ids, close_ids, build_choices(tokenizer, settings.probe_choices), settings.probe_every,
                     settings.probe_min_mass)


def read(logits: torch.Tensor, spec: ProbeSpec) -> list[Reading]:
    """Readings for each row of ``logits`` (rows x vocab, the position right after the suffix)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_choice = torch.stack([torch.logsumexp(logp[:, list(c.token_ids)], dim=-1) for c in spec.choices])
    mass = per_choice.logsumexp(dim=0).exp()
    # One host transfer for all rows and choices.
    values, masses = per_choice.T.tolist(), mass.tolist()
    readings = []
    for row_vals, m in zip(values, masses):
        readings.append(Reading(
            logodds=row_vals[0] - row_vals[1],
            mass=m,
            logprobs={c.label: v for c, v in zip(spec.choices, row_vals)},
            reliable=m >= spec.min_mass,
        ))
    return readings
