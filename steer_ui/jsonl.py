"""Reading JSON-lines files (pairs, questions) with one clear error for each way they can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

from steer_ui.errors import UserError


def parse_lines(text: str, where: str) -> list[tuple[str, object]]:
    """``(where:line, object)`` for every non-blank line of ``text``."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{where}:{number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(f"{where}:{number}: not valid JSON ({err.msg})") from None
    return out


def read_jsonl(path: str | Path, what: str, max_bytes: int, missing_hint: str = "") -> list[tuple[str, object]]:
    """The objects of a JSONL file of ``what`` (pairs, questions), each with the place it came from."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such {what} file: {p}{missing_hint}")
    if p.stat().st_size > max_bytes:
        raise UserError(f"{p}: larger than {max_bytes // 2**20} MB; that is not a {what} file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text (expected JSON lines)") from None
    objects = parse_lines(text, str(p))
    if not objects:
        raise UserError(f"{p}: no {what} found")
    return objects
