"""Reading JSON-lines files (pairs, questions) with one clear error for each way they can be wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from steer_ui.errors import UserError


def loads(line: str, place: str) -> object:
    """One line's JSON object, or one UserError naming ``place``: malformed JSON, and JSON nested so
    deeply that the parser gives up (``[[[[...`` raises RecursionError, not a JSONDecodeError)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{place}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise UserError(f"{place}: not valid JSON (nested too deeply)") from None
    try:
        line.encode("utf-8")  # a lone surrogate in the text itself (a form field decoded from JSON)
        if "\\u" in line:  # or made by an escape such as \ud800
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{place}: not valid text (a lone surrogate)") from None
    return obj


def parse_lines(text: str, where: str) -> list[tuple[str, object]]:
    """``(where:line, object)`` for every non-blank line of ``text``."""
    return [(f"{where}:{number}", loads(line, f"{where}:{number}"))
            for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def iter_jsonl(path: str | Path, what: str, max_bytes: int, missing_hint: str = "",
               name: str | None = None) -> Iterator[tuple[str, object]]:
    """The objects of a JSONL file of ``what`` (pairs, questions), each with the place it came from, read
    a line at a time (a caller that has enough stops reading). ``name`` names the file in errors and places
    instead of its path (a server does not show where it keeps uploads)."""
    p = Path(path).expanduser()
    where = name if name is not None else str(p)
    if not p.is_file():
        raise UserError(f"no such {what} file: {where}{missing_hint}")
    if p.stat().st_size > max_bytes:
        raise UserError(f"{where}: larger than {max_bytes // 2**20} MB; that is not a {what} file")
    found = False
    try:
        with open(p, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = loads(line, f"{where}:{number}")
                found = True
                yield f"{where}:{number}", obj
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text (expected JSON lines)") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read the file ({err.strerror or type(err).__name__})") from None
    if not found:
        raise UserError(f"{where}: no {what} found")


def read_jsonl(path: str | Path, what: str, max_bytes: int, missing_hint: str = "",
               name: str | None = None) -> list[tuple[str, object]]:
    """Every object of a JSONL file (see ``iter_jsonl``)."""
    return list(iter_jsonl(path, what, max_bytes, missing_hint, name))
