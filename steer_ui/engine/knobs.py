"""Every knob of a run, declared once: name, default, range, help text and how to read it from text.

A knob's name is its name everywhere: the ``RunSettings`` field (or, for the steering knobs, the form
field that becomes steered rows), the API parameter, the dashboard widget and, with dashes, the CLI
option. The CLI options (``steer_ui.cli.options``), the dashboard's widgets (``steer_ui.app.form``),
the API's parameter list, hosted mode's caps (``steer_ui.app.hosted``) and sweeps' templates are all
derived from ``KNOBS``; adding a knob here (and, if it is a run setting, a ``RunSettings`` field of the
same name) is the whole change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from steer_ui.engine.budget import Budget
from steer_ui.engine.scope import SCOPE_CHOICES, SCOPE_HELP, Scope
from steer_ui.errors import UserError
from steer_ui.vectors.layers import format_layers, parse_layers

Kind = Literal["text", "int", "float", "bool", "choice", "list"]
Group = Literal["prompt", "steering", "decoding", "probe"]


@dataclass(frozen=True)
class RowSpec:
    """One row as written (``--row confidence=-6@12-15/generated``, ``--row budget:min=200``,
    ``--row confidence=-6/think+budget:min=200``): the vector by name or path, a thinking budget, or both."""

    vector: str | None
    coef: float = 0.0
    layers: tuple[int, ...] | None = None  # None: the layers of the form (or the vector's own)
    scope: Scope | None = None  # None: the form's scope
    budget: Budget | None = None

    def __str__(self) -> str:
        if self.vector is None:
            return str(self.budget)
        at = f"@{format_layers(self.layers)}" if self.layers is not None else ""
        scope = f"/{self.scope}" if self.scope is not None else ""
        budget = f"+{self.budget}" if self.budget is not None else ""
        return f"{self.vector}={number_text(self.coef)}{at}{scope}{budget}"


def number_text(x: float) -> str:
    """The shortest text that reads back as exactly ``x`` ('4', '-0.5', '0.3333333333333333')."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


# --- readers from text (CLI arguments, text boxes, API strings) ---------------------------------
def parse_coefs(text: str | Sequence[float] | float | None) -> tuple[float, ...]:
    """'4, 8, -6' (commas or semicolons) or numbers; each must be finite."""
    if text is None:
        return ()
    if isinstance(text, (int, float)):
        parts: list = [text]
    elif isinstance(text, str):
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    else:
        parts = list(text)
    out = []
    for part in parts:
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise UserError(f"coefficient {str(part).strip()[:40]!r} is not a number: write them like "
                            "'4, 8, -6'") from None
        if not math.isfinite(value):
            raise UserError(f"coefficient {str(part).strip()!r} is not a finite number")
        out.append(value)
    return tuple(out)


def parse_choices(text: str | Sequence[str]) -> tuple[str, ...]:
    """'Yes,No', or with '|' between them when an answer has a comma: '(2, -1)|(1, 2)'."""
    if isinstance(text, str):
        parts = text.split("|") if "|" in text else text.split(",")
    else:
        parts = list(text)
    return tuple(str(c).strip() for c in parts)


def parse_row(text: str | RowSpec) -> RowSpec:
    """``VECTOR=COEF[@LAYERS][/SCOPE][+BUDGET]`` (VECTOR: a preset name or a vector file) or ``BUDGET``
    alone, e.g. ``confidence=-6``, ``confidence=-6@12-15/generated``, ``budget:min=200``,
    ``reconsideration=4@12-15/think+budget:min=2000`` (BUDGET: ``engine.budget``)."""
    if isinstance(text, RowSpec):
        return text
    text = str(text)
    if text.strip().lower().startswith("budget:"):
        return RowSpec(None, budget=Budget.parse(text))
    head, *tail = re.split(r"\+\s*(?=budget:)", text, maxsplit=1, flags=re.IGNORECASE)
    budget = Budget.parse(tail[0]) if tail else None
    spec = _vector_row(head)
    return RowSpec(spec.vector, spec.coef, spec.layers, spec.scope, budget)


def _vector_row(text: str) -> RowSpec:
    m = re.fullmatch(r"\s*([^=]+?)\s*=\s*([^@/]+?)\s*(?:@\s*([^/]+?))?\s*(?:/\s*(.+?))?\s*", str(text))
    if not m:
        raise UserError(f"cannot read row {str(text)[:60]!r}: write VECTOR=COEF, VECTOR=COEF@LAYERS or "
                        "VECTOR=COEF@LAYERS/SCOPE, e.g. confidence=-6@12-15")
    coefs = parse_coefs(m.group(2))
    if len(coefs) != 1:
        raise UserError(f"row {text.strip()[:60]!r} needs exactly one coefficient after '='")
    layers = parse_layers(m.group(3)) if m.group(3) else None
    return RowSpec(m.group(1), coefs[0], layers, Scope.parse(m.group(4)) if m.group(4) else None)


def parse_rows(text: str | Sequence[str | RowSpec] | None) -> tuple[RowSpec, ...]:
    """Rows one per line or separated by ';' (a comma belongs to layer lists: '3,5,7')."""
    if not text:
        return ()
    items = re.split(r"[;\n]", text) if isinstance(text, str) else list(text)
    return tuple(parse_row(item) for item in items if str(item).strip())


def format_rows(rows: Sequence[RowSpec]) -> str:
    return "\n".join(map(str, rows))


def _text_or_none(text: str | None) -> str | None:
    return text if text is not None and str(text).strip() else None


@dataclass(frozen=True)
class Knob:
    """One run knob. ``parse`` reads its text form; ``check`` refuses a value out of range."""

    name: str
    default: Any
    label: str  # the dashboard's label
    help: str  # CLI help and the widget's info line
    kind: Kind = "text"
    group: Group = "decoding"
    parse: Callable[[Any], Any] | None = None  # text (or a loose value) -> value; UserError when unreadable
    show: Callable[[Any], Any] | None = None  # value -> its text form (widgets, refilling a form)
    lo: float | None = None  # inclusive bounds, checked on every value
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    ui_max: float | None = None  # a slider's right end when the knob has no ``hi``
    step: float = 1
    choices: tuple[str, ...] = ()
    required: bool = False
    flag: str = ""  # the CLI option; '--' + the name with dashes unless given
    flag_sets: Any = None  # bool knobs: the value the CLI flag stores
    flag_help: str = ""  # the CLI's help when it differs from ``help`` (a flag that turns a knob off)
    metavar: str = ""  # the CLI's placeholder for the value
    repeat: bool = False  # the CLI option may be given several times, each adding to a list
    hosted_cap: tuple[str, int] | None = None  # (cap name, default): number <= cap, text length or item count <= cap

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def what(self) -> str:
        """The knob as messages name it: 'max new tokens', 'top-p'."""
        if self.kind == "bool":
            return self.label.lower()
        return re.sub(r"-(?=\w\w)", " ", self.cli_flag.lstrip("-"))  # top-p stays top-p

    def read(self, value: Any) -> Any:
        """``value`` as this knob's type: text parsed, whole numbers checked, None for the default."""
        if value is None:
            return self.default
        if isinstance(value, str):
            valid_text(value, self.what)
        if self.parse is not None:
            return self.parse(value)
        if self.kind == "int":
            return _whole(value, self.what)
        if self.kind == "float":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{self.what} must be a number, got {str(value)[:40]!r}") from None
            if not math.isfinite(number):
                raise UserError(f"{self.what} must be a finite number, got {value}")
            return number
        if self.kind == "bool":
            return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
        if self.kind == "choice":
            value = str(value).strip()
            if value not in self.choices:
                raise UserError(f"unknown {self.what} {value[:40]!r}: use {' or '.join(self.choices)}")
            return value
        return str(value)

    def check(self, value: Any) -> None:
        if self.lo is None and self.hi is None:
            return
        ok = value is not None and math.isfinite(value)
        ok = ok and (self.lo is None or (value > self.lo if self.lo_open else value >= self.lo))
        ok = ok and (self.hi is None or value <= self.hi)
        if not ok:
            raise UserError(f"{self.what} must be {self.range_text()}, got {value}")

    def range_text(self) -> str:
        if self.hi is None:
            return f"a finite number >= {self.lo:g}" if self.kind == "float" else f">= {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def shown(self, value: Any) -> Any:
        """The value as a widget or a CLI user writes it."""
        if self.show is not None:
            return self.show(value)
        return value


def valid_text(value: str, what: str) -> None:
    """Text that is not valid Unicode (a lone surrogate: JSON's "\\ud800", or undecodable bytes on a
    command line) cannot be stored, streamed or exported (it broke a run's last update and the whole
    log's export), so it is refused where it comes in, even in a field the run never tokenizes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(f"the {what} is not valid text (a lone surrogate at character {err.start + 1})") from None


def _whole(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _show_choices(choices: Sequence[str]) -> str:
    return ("|" if any("," in c for c in choices) else ",").join(choices)


def _show_coefs(coefs: Sequence[float]) -> str:
    return ", ".join(map(number_text, coefs))


KNOBS: tuple[Knob, ...] = (
    # The prompt.
    Knob("prompt", "", "Prompt", "the user message (or raw text without the chat template)", group="prompt",
         required=True, metavar="TEXT", hosted_cap=("prompt_chars", 4000)),
    Knob("system_prompt", None, "System prompt", "system prompt (default: the chat template's own)",
         group="prompt", flag="--system", parse=_text_or_none, metavar="TEXT"),
    Knob("chat_template", True, "Use the chat template", "off: the prompt is tokenized as-is", kind="bool",
         group="prompt", flag="--raw", flag_sets=False, flag_help="no chat template: tokenize the prompt as-is"),
    # Steering: a vector with one steered row per coefficient, and rows with vectors of their own.
    Knob("vector", None, "Steering vector", "vector file (.gguf, .safetensors, .pt, .npy) or a preset name "
         "(reconsideration, verbosity, confidence for the bundled model)", group="steering", parse=_text_or_none,
         metavar="FILE|PRESET"),
    Knob("layers", None, "Layers", "'12-15', '3,5,7' or 'all' (the vector's layers)", group="steering",
         parse=parse_layers, show=format_layers),
    Knob("coefs", (), "Coefficients", "steering coefficient: one steered row each (repeat the option, or "
         "'4, 8')", kind="list", group="steering", flag="--coef", repeat=True, parse=parse_coefs,
         show=_show_coefs, metavar="C"),
    Knob("scope", Scope(), "Scope", f"where the vector is added: {SCOPE_HELP}", kind="choice",
         choices=SCOPE_CHOICES, group="steering", parse=Scope.parse, show=str),
    Knob("rows", (), "Rows with their own vector or budget", "a row with its own vector: VECTOR=COEF, "
         "VECTOR=COEF@LAYERS or VECTOR=COEF@LAYERS/SCOPE; a thinking budget: budget:min=N[,wait=TEXT][,times=K], "
         "budget:max=N[,cue=TEXT]; or both: VECTOR=COEF/SCOPE+budget:min=N (repeat the option; in a text box "
         "one per line)", kind="list", group="steering", flag="--row", repeat=True, parse=parse_rows,
         show=format_rows, metavar="VECTOR=COEF[@LAYERS][/SCOPE][+budget:...]|budget:..."),
    # Decoding.
    Knob("max_new_tokens", 128, "Max new tokens", "new tokens per row at most", kind="int", lo=1, ui_max=2048,
         hosted_cap=("max_new_tokens", 512)),
    Knob("ignore_eos", False, "Keep generating past end-of-sequence", "every row runs to max new tokens "
         "(fixed-length comparisons, benchmarks)", kind="bool", flag_sets=True),
    Knob("eager", False, "Decode eagerly (no compiled steps)", "decode eagerly even where compiled steps (CUDA "
         "graphs) are ready: for comparisons and debugging", kind="bool", flag_sets=True),
    Knob("cache", "dynamic", "KV cache", "eager runs' KV cache: dynamic (grows per token) or static "
         "(preallocated for the run; no per-step copies); compiled steps always use a static one", kind="choice",
         choices=("dynamic", "static")),
    Knob("temperature", 0.0, "Temperature (0 = greedy)", "0 = greedy", kind="float", lo=0, ui_max=2, step=0.05),
    Knob("top_p", 1.0, "Top-p", "nucleus sampling: keep the likeliest tokens up to this probability",
         kind="float", lo=0, lo_open=True, hi=1, step=0.05),
    Knob("top_k", 0, "Top-k (0 = off)", "sample from the k likeliest tokens only (0 = off)", kind="int", lo=0,
         ui_max=200),
    Knob("seed", 0, "Seed", "sampling seed (rows share each step's noise)", kind="int"),
    # The probe.
    Knob("probe_suffix", None, "Probe suffix", "forcing text (default: the model table's)", group="probe",
         parse=_text_or_none),
    Knob("probe_choices", ("Yes", "No"), "Probe choices (first is positive)", "comma-separated (or '|' when an "
         "answer has a comma); the first is the positive one; any text: '391,392', 'Paris,Lyon', '\\frac{3}{4},0.7'",
         group="probe", parse=parse_choices, show=_show_choices),
    Knob("probe_gold", None, "Gold answer", "the correct answer: the probe reads P(gold) against every other answer "
         "(the chart's log-odds become log P(gold) - log(1 - P(gold))); choices given besides Yes/No are read too",
         group="probe", flag="--gold", parse=_text_or_none, metavar="ANSWER"),
    Knob("probe_every", 4, "Read the probe every N tokens (0 = off)", "read the probe every K tokens "
         "(0 = off)", kind="int", group="probe", lo=0, ui_max=32),
    Knob("probe_min_mass", 0.1, "Probe min mass", "readings with less probability on the choices are flagged "
         "unreliable", kind="float", group="probe", lo=0, hi=1, step=0.01),
)

BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
STEERING = ("vector", "layers", "coefs", "scope", "rows")  # form knobs that become RunSettings.rows


def knob(name: str) -> Knob:
    return BY_NAME[name]


def default(name: str) -> Any:
    return BY_NAME[name].default
