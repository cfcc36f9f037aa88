"""Text cells of the CSV files steer-ui writes, safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets, and model output, prompts and question files are text a visitor chose
(``=HYPERLINK(...)`` opened from an export is the classic injection). Such a text cell is written
with a leading ``'``, which spreadsheets show as "this is text" and hide; so is a text that itself
starts with ``'``, so that ``read`` can strip exactly one and every text round-trips. Numbers are
written as they are (a coefficient of -4 stays a number).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def cell(value: Any) -> Any:
    """``value`` as written to a CSV cell: a text that a spreadsheet would run gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def read(text: str) -> str:
    """A cell's text as it was before ``cell``."""
    return text[1:] if text.startswith("'") else text


def row(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cell(v) for k, v in values.items()}


def read_row(values: Mapping[str, str]) -> dict[str, str]:
    return {k: read(v) if isinstance(v, str) else v for k, v in values.items()}
