"""Examples a vector is trained from (``training``): a prompt with a completion to make likely, or with a
chosen and a rejected reply to prefer one over the other; parsed from JSONL, one kind per file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steer_ui.errors import UserError
from steer_ui.jsonl import read_jsonl

Objective = Literal["likelihood", "preference"]
MAX_EXAMPLES_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Example:
    """One training example: a prompt and either a completion or a chosen/rejected pair of replies."""

    prompt: str
    completion: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    @property
    def objective(self) -> Objective:
        return "likelihood" if self.completion is not None else "preference"


def parse_example(obj: object, where: str, max_chars: int | None = None) -> Example:
    """An example from one parsed JSONL line; UserError naming the line when it is not one."""
    shape = '{"prompt": ..., "completion": ...} or {"prompt": ..., "chosen": ..., "rejected": ...}'
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise UserError(f"{where}: expected {shape}")
    keys = ("completion",) if "completion" in obj else ("chosen", "rejected")
    if not all(isinstance(obj.get(k), str) and obj[k].strip() for k in keys) or not obj["prompt"].strip():
        raise UserError(f"{where}: expected {shape}, each text non-empty")
    for key in ("prompt", *keys):
        if max_chars is not None and len(obj[key]) > max_chars:
            raise UserError(f"{where}: the {key} is {len(obj[key]):,} characters; the limit is {max_chars:,}")
    return Example(obj["prompt"], *(obj.get(k) for k in ("completion", "chosen", "rejected")))


def read_examples_jsonl(path: str | Path, max_chars: int | None = None, name: str | None = None) -> list[Example]:
    examples = [parse_example(obj, where, max_chars)
                for where, obj in read_jsonl(path, "examples", MAX_EXAMPLES_FILE_BYTES, name=name)]
    if len({e.objective for e in examples}) > 1:
        raise UserError(f"{name or path}: mixes completion and chosen/rejected examples; use one kind per file")
    return examples


def examples_hash(examples: Sequence[Example]) -> str:
    blob = json.dumps([[e.prompt, e.completion, e.chosen, e.rejected] for e in examples]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
