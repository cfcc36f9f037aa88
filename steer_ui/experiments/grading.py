"""Reading the final answer out of a chain of thought, and scoring it.

Order of trust: a ``\\boxed{...}`` answer (the last one), then an explicit "answer is / answer:" phrase
(the last one), then, for yes/no, the last line that opens with Yes or No, and for numbers, the last
number after the thinking block. Anything else is no answer (scored wrong), never a guess.

Numbers and math answers are compared with the gold answer by mathematical equivalence through
Hugging Face's math-verify (what open reasoning evaluations use): ``\\frac{3}{4}`` = ``0.75``,
``(2, -1)`` = ``(2,-1)``, ``3\\sqrt{2}`` = ``\\sqrt{18}``. math-verify bounds its sympy work with
``signal.alarm``, which only works in the main thread; elsewhere (the dashboard runs sweeps in worker
threads) the comparison runs in a child process that is killed after ``VERIFY_TIMEOUT_S``, so a
pathological answer (``2^{2^{2^{99}}}``) costs seconds, not the server.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

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


VERIFY_TIMEOUT_S = 5.0
MAX_VERIFY_CHARS = 512  # longer answers are compared as text: no model writes a 512-character boxed answer


def is_correct(value: str | None, question: Question) -> bool:
    if value is None:
        return False
    if question.kind == "yesno":
        gold = "Yes" if question.answer.strip().lower() in ("yes", "true") else "No"
        return value == gold
    if question.kind == "number":
        gold, got = parse_number(question.answer), parse_number(value)
        if gold is not None and got is not None and gold == got:
            return True
    if _text_key(value) == _text_key(question.answer):
        return True
    return equivalent(question.answer, value)


def _text_key(s: str) -> str:
    return re.sub(r"\s+|\\left|\\right|\\!|\$", "", s).lower().rstrip(".")


@lru_cache(maxsize=4096)
def equivalent(gold: str, answer: str) -> bool:
    """Whether ``answer`` equals ``gold`` mathematically (math-verify, each read as a boxed answer)."""
    if len(gold) > MAX_VERIFY_CHARS or len(answer) > MAX_VERIFY_CHARS:
        return False
    if threading.current_thread() is threading.main_thread():
        return _verify(gold, answer, VERIFY_TIMEOUT_S)
    return _verify_in_child(gold, answer)


def _verify(gold: str, answer: str, timeout_s: float | None) -> bool:
    from math_verify import parse, verify

    seconds = None if timeout_s is None else max(1, int(timeout_s))
    try:
        return bool(verify(parse(f"\\boxed{{{gold}}}", parsing_timeout=seconds),
                           parse(f"\\boxed{{{answer}}}", parsing_timeout=seconds), timeout_seconds=seconds))
    except Exception:  # noqa: BLE001 - math-verify raises on what it cannot read: not equal, not a crash
        return False


class _ChildVerifier:
    """math-verify in a child Python for worker threads: one JSON line in, one out; a comparison that
    takes longer than ``VERIFY_TIMEOUT_S`` kills the child (the next comparison starts a new one)."""

    STARTUP_S = 60.0  # importing sympy and math-verify in a fresh interpreter: ~2 s here

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def __call__(self, gold: str, answer: str) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                if self._ask(["1", "1"], self.STARTUP_S) is None:
                    return False
            return bool(self._ask([gold, answer], VERIFY_TIMEOUT_S))

    def _ask(self, pair: list[str], timeout_s: float) -> bool | None:
        proc = self._proc
        try:
            proc.stdin.write(json.dumps(pair) + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
            line = proc.stdout.readline() if ready else ""
        except OSError:
            line = ""
        if not line:  # too slow, or the child died: not equal, and a fresh child next time
            proc.kill()
            proc.wait()
            self._proc = None
            return None
        return json.loads(line)


_verify_in_child = _ChildVerifier()


def _serve() -> None:
    for line in sys.stdin:
        gold, answer = json.loads(line)
        print(json.dumps(_verify(gold, answer, None)), flush=True)


if __name__ == "__main__":
    _serve()
