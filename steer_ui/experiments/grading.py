"""Reading the final answer out of a chain of thought, and scoring it.

Order of trust: a ``\\boxed{...}`` answer (the last one), then an explicit "answer is / answer:" phrase
(the last one), then, for yes/no, the last line that opens with Yes or No, and for numbers, the last
number after the thinking block. Anything else is no answer (scored wrong), never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from steer_ui.experiments.questions import Question

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_ANSWER_PHRASE = re.compile(r"answer(?:\*\*)?\s*(?:is\b|:|=)\s*(?:\*\*)?\s*(?P<ans>[^\n]*)", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    value: str | None  # normalised: "Yes"/"No", a number as text, or text; None when nothing was found
    how: str  # boxed | phrase | line | last-number | none


def after_thinking(text: str, think_close: str | None = "</think>") -> str:
    """The answer part of a reply: after the closing think tag when there is one."""
    if think_close and think_close in text:
        return text.rsplit(think_close, 1)[1]
    return text


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def _yesno(fragment: str) -> str | None:
    m = _YESNO.search(fragment)
    if not m:
        return None
    return "Yes" if m.group(1).lower() in ("yes", "true") else "No"


def parse_number(fragment: str) -> Fraction | None:
    """A number in ``fragment``: integers, decimals, thousands commas, a/b and \\frac{a}{b}."""
    s = fragment.replace("\\!", "").replace("$", "").replace("\\%", "").replace("%", "")
    frac = re.search(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if frac and int(frac.group(2)) != 0:
        return Fraction(int(frac.group(1)), int(frac.group(2)))
    ratio = re.search(r"(-?\d+)\s*/\s*(\d+)", s)
    if ratio and int(ratio.group(2)) != 0:
        return Fraction(int(ratio.group(1)), int(ratio.group(2)))
    m = re.search(_NUMBER, s)
    if not m:
        return None
    token = m.group(0).replace(",", "")
    try:
        return Fraction(token)
    except ValueError:
        return None


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def read_answer(text: str, kind: str, think_close: str | None = "</think>") -> Extracted:
    answer = after_thinking(text, think_close)
    boxed = last_boxed(answer)
    if boxed is not None:
        value = _normalise(boxed, kind)
        if value is not None:
            return Extracted(value, "boxed")
    phrases = [m.group("ans") for m in _ANSWER_PHRASE.finditer(answer)]
    for fragment in reversed(phrases):
        value = _normalise(fragment, kind)
        if value is not None:
            return Extracted(value, "phrase")
    if kind == "yesno":
        openings = re.findall(r"^\s*(?:\*\*)?\s*(yes|no)\b", answer, re.IGNORECASE | re.MULTILINE)
        if openings:  # the last line that opens with Yes or No
            return Extracted("Yes" if openings[-1].lower() == "yes" else "No", "line")
    elif kind == "number":
        numbers = re.findall(_NUMBER, answer)
        if numbers:
            value = parse_number(numbers[-1])
            if value is not None:
                return Extracted(_fmt(value), "last-number")
    return Extracted(None, "none")


def _normalise(fragment: str, kind: str) -> str | None:
    if kind == "yesno":
        return _yesno(fragment)
    if kind == "number":
        value = parse_number(fragment)
        return _fmt(value) if value is not None else None
    cleaned = re.sub(r"\\text\{([^}]*)\}", r"\1", fragment).strip().strip("$.").strip()
    return cleaned or None


def is_correct(value: str | None, question: Question) -> bool:
    if value is None:
        return False
    if question.kind == "yesno":
        gold = "Yes" if question.answer.strip().lower() in ("yes", "true") else "No"
        return value == gold
    if question.kind == "number":
        gold = parse_number(question.answer)
        got = parse_number(value)
        return gold is not None and got is not None and gold == got
    return _text_key(value) == _text_key(question.answer)


def _text_key(s: str) -> str:
    return re.sub(r"\s+|\\left|\\right|\\!|\$", "", s).lower().rstrip(".")
