"""Hosted mode: caps on what one request may ask for, a per-session rate limit, a model allow-list.

Caps on run knobs (max new tokens, prompt length) are declared with the knobs themselves
(``Knob.hosted_cap``); the others (steered rows, pairs, uploads, ...) belong to hosting alone.

Off for a local install (everything allowed); on with ``python app.py --hosted`` or
``STEER_UI_HOSTED=1``. Every refusal is a UserError that names the limit and its value. The caps can be
changed through environment variables (``STEER_UI_MAX_NEW_TOKENS=1024`` and so on; see docs/hosting.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import gradio as gr

from steer_ui.engine.knobs import BY_NAME, KNOBS, Knob
from steer_ui.engine.probe import build_probe
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError

FIELD_CHARS = 4096  # any uncapped text field (layers, coefficients, rows, choices, ...): far above real use
FIELD_ITEMS = 64  # any list a field may hold

# Caps on run knobs come from the knobs' own declarations: (cap name, knob).
KNOB_CAPS: dict[str, Knob] = {k.hosted_cap[0]: k for k in KNOBS if k.hosted_cap}


def _default_caps() -> dict[str, int]:
    return {name: k.hosted_cap[1] for name, k in KNOB_CAPS.items()}


@dataclass(frozen=True)
class Limits:
    caps: Mapping[str, int] = field(default_factory=_default_caps)  # knob caps: max_new_tokens, prompt_chars
    steered_rows: int = 4
    pairs: int = 200
    pair_chars: int = 4000  # per pair text (and training example text); a long text is also cut when read
    train_examples: int = 200
    train_steps: int = 200
    # token positions one training may put through the model (training.planned_positions: steps x batch x
    # tokens with the backward pass, held-out evaluations, the reference pass), counted before it starts
    train_positions: int = 400_000
    vector_positions: int = 200_000  # tokens a vector computation reads (its pairs' texts), counted before it starts
    upload_mb: int = 16  # one uploaded file
    uploads_per_hour: int = 60  # per client address (request_limits)
    upload_mb_per_hour: int = 128  # per client address
    body_mb: int = 4  # any other request's body (the largest form: 200 training examples of 3 x 4,000 characters)
    sweep_questions: int = 20
    probe_positions: int = 32  # extra positions multi-token probe choices add to every reading (a Yes/No probe: 0)
    probe_suffix_tokens: int = 32  # the probe suffix in tokens (with a closing think tag where there is one)
    queue_size: int = 16
    runs_per_minute: int = 6  # per browser session: generations, vector computations and sweeps
    # seconds of the model one session may use in any 10 minutes (a client address: 3x); the largest run the
    # caps allow took 68.4 s on 2 CPU cores
    model_seconds: int = 180
    page_loads_per_minute: int = 60  # per client address (a page load reads the log; with ?run= it opens a run)
    allowed_models: tuple[str, ...] = ()  # besides the model loaded at start; () = that one only

    def cap(self, name: str) -> int:
        return self.caps.get(name, _default_caps()[name])

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults, overridden by STEER_UI_<NAME> variables (STEER_UI_ALLOWED_MODELS: comma-separated)."""
        values: dict = {}
        caps = _default_caps()
        for name in [*caps, *(f.name for f in fields(cls) if f.name != "caps")]:
            raw = os.environ.get(f"STEER_UI_{name.upper()}")
            if raw is None:
                continue
            if name == "allowed_models":
                values[name] = tuple(m.strip() for m in raw.split(",") if m.strip())
            elif name in caps:
                caps[name] = _positive(name, raw)
            else:
                values[name] = _positive(name, raw)
        return cls(caps=caps, **values)

    def check_settings(self, settings: RunSettings) -> None:
        """Every capped knob of ``settings``, and the number of steered rows."""
        for name, knob in KNOB_CAPS.items():
            self.check_knob(knob, getattr(settings, knob.name), self.cap(name))
        if len(settings.rows) > self.steered_rows:
            raise UserError(f"{len(settings.rows)} steered rows asked; this server's limit is {self.steered_rows}")

    def check_probe(self, settings: RunSettings, lm) -> None:
        """The suffix (or its closing-think form) and the choices' tree ride in every row's forward at every
        probe step: both counted in tokens, before any forward (a character cap let 4,096 characters be
        12,288 tokens, and one step take 181 s)."""
        if settings.probe_every <= 0:
            return
        spec = build_probe(lm.tokenizer, lm.profile, settings)
        suffix = max(len(spec.suffix_ids), len(spec.close_think_ids or ()))
        if suffix > self.probe_suffix_tokens:
            tag = " with its closing tag" if spec.close_think_ids else ""
            raise UserError(f"the probe suffix is {suffix} tokens{tag}; this server's limit is "
                            f"{self.probe_suffix_tokens}")
        if spec.tree.size > self.probe_positions:
            raise UserError(f"the probe choices add {spec.tree.size} positions to every reading; this server's limit "
                            f"is {self.probe_positions}: use fewer or shorter choices")

    def check_form(self, form: Mapping[str, Any]) -> None:
        """The raw form, before any of it is parsed or a vector is read: each text's length (a capped knob's
        own cap, else ``FIELD_CHARS``), then how many steered rows it asks for."""
        for name, value in form.items():
            knob = BY_NAME.get(name)
            cap = self.cap(knob.hosted_cap[0]) if knob is not None and knob.hosted_cap else FIELD_CHARS
            if isinstance(value, str) and len(value) > cap:
                raise UserError(f"the {name.replace('_', ' ')} field is {len(value):,} characters; this server's "
                                f"limit is {cap:,}")
            if isinstance(value, (list, tuple, dict)) and len(value) > FIELD_ITEMS:
                raise UserError(f"the {name.replace('_', ' ')} field has {len(value):,} items; this server's "
                                f"limit is {FIELD_ITEMS}")
        asked = len(BY_NAME["rows"].read(form.get("rows")))
        if BY_NAME["vector"].read(form.get("vector")):
            asked += len(BY_NAME["coefs"].read(form.get("coefs")))
        if asked > self.steered_rows:
            raise UserError(f"{asked} steered rows asked; this server's limit is {self.steered_rows}")

    @staticmethod
    def check_text(value: object, what: str) -> None:
        """A free text field outside the run form (layers to compute or train on) against ``FIELD_CHARS``."""
        if isinstance(value, str) and len(value) > FIELD_CHARS:
            raise UserError(f"the {what} field is {len(value):,} characters; this server's limit is {FIELD_CHARS:,}")

    @staticmethod
    def check_knob(knob: Knob, value: object, cap: int) -> None:
        if isinstance(value, str):
            if len(value) > cap:
                raise UserError(f"the {knob.what} is {len(value)} characters; this server's limit is {cap}")
        elif isinstance(value, (tuple, list)):
            if len(value) > cap:
                raise UserError(f"{len(value)} {knob.what} given; this server's limit is {cap}")
        elif value is not None and value > cap:
            raise UserError(f"{knob.what} {value} is above this server's limit of {cap}")

    def check_vector_positions(self, positions: int) -> None:
        if positions > self.vector_positions:
            raise UserError(f"these pairs are {positions:,} tokens to read; this server's limit is "
                            f"{self.vector_positions:,}: use fewer or shorter pairs")

    def check_questions(self, questions) -> None:
        """Each question becomes a run's prompt: the prompt cap applies to it as to a typed prompt."""
        cap = self.cap(BY_NAME["prompt"].hosted_cap[0])
        for q in questions:
            if len(q.question) > cap:
                raise UserError(f"question {q.id[:40]!r} is {len(q.question):,} characters; this server's limit "
                                f"for a prompt is {cap:,}")

    def check_training(self, positions: int) -> None:
        if positions > self.train_positions:
            raise UserError(f"this training would put {positions:,} token positions through the model (steps x "
                            f"batch x tokens, with held-out evaluations); this server's limit is "
                            f"{self.train_positions:,}: use fewer steps, or fewer or shorter examples")

    def check_file(self, path: str | None, what: str) -> None:
        if path and os.path.getsize(path) > self.upload_mb * 2**20:
            raise UserError(f"the {what} is larger than this server's upload limit of {self.upload_mb} MB")

    def check_model(self, spec: str, startup_model: str) -> None:
        allowed = (startup_model, *self.allowed_models)
        if spec.strip() not in allowed:
            raise UserError(f"this server only loads: {', '.join(allowed)}")

    def __str__(self) -> str:
        caps = ", ".join(f"{k} {v}" for k, v in self.caps.items())
        rest = ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self) if f.name != "caps")
        return f"{caps}, {rest}"


def _positive(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"STEER_UI_{name.upper()} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UserError(f"STEER_UI_{name.upper()} must be >= 1, got {raw!r}")
    return value


@dataclass
class RateLimiter:
    """At most ``per_minute`` admissions per session and ``per_address`` per client address in any 60 s
    window. Sessions are the server-issued ones (a client cannot mint them), and the address cap stops a
    caller who starts a fresh session for every request. Keys with nothing in the window are dropped, so
    the table does not grow with every visitor ever seen."""

    per_minute: int
    per_address: int | None = None  # default: 3x per_minute (a lab behind one address is several people)
    unit: str = "runs"  # what is counted, as the refusal says it
    _seen: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sweep: float = 0.0

    def admit(self, session: str | None, address: str | None = None, now: float | None = None) -> None:
        """Count one request of ``session`` from ``address``; UserError (naming the wait) when over a limit."""
        now = time.monotonic() if now is None else now
        per_address = self.per_address or 3 * self.per_minute
        # A request without a session (an API caller, a forged token) counts as its address's session, so
        # starting a fresh one per request buys nothing; the address cap bounds many real sessions.
        address = address or "unknown"
        checks = [(f"s:{session}" if session else f"n:{address}", self.per_minute, "per session"),
                  (f"a:{address}", per_address, "per client address")]
        with self._lock:
            self._sweep(now)
            for key, limit, what in checks:
                times = self._window(key, now)
                if len(times) >= limit:
                    raise UserError(f"rate limit: {limit} {self.unit} a minute {what} on this server; "
                                    f"try again in {60 - (now - times[0]):.0f} s")
            for key, _, _ in checks:
                self._seen.setdefault(key, deque()).append(now)

    def _window(self, key: str, now: float) -> deque:
        times = self._seen.get(key, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        return times

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for key in [k for k, times in self._seen.items() if not times or now - times[-1] >= 60]:
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


def rate_validator(rate: RateLimiter | None, session_of: Callable[[object], str | None]) -> Callable:
    """Hosted mode's rate limit as a Gradio validator: it runs before the request takes a queue slot, with
    the event's inputs by name, and answers one ``gr.validate`` per input (the first carries a refusal).
    The limit is keyed by the verified browser session (``session_of(token)``) and the client's address."""
    def validator(*args, request: gr.Request = None, **inputs) -> list[dict]:
        ok = [gr.validate(True, "") for _ in range(len(args) + len(inputs))]
        if rate is None:
            return ok
        address = getattr(getattr(request, "client", None), "host", None)
        try:
            rate.admit(session_of(inputs.get("browser_id")), address)
        except UserError as err:
            return [gr.validate(False, str(err)), *ok[1:]]
        return ok

    return validator


@dataclass
class ModelTime:
    """The seconds of the model each session and each client address used in the last ``window_s``. Runs,
    sweeps, trainings and vector computations are charged what they held the model for, and a new one
    is refused before it starts once either is spent: a count of runs let one session's 6 runs at the
    caps keep another visitor waiting 347 s. Keys quiet for a window are dropped."""

    per_session: float
    per_address: float
    window_s: float = 600.0
    _used: dict[str, deque] = field(default_factory=dict)  # key -> (time, seconds)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, session: str | None, address: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, budget, what in self._keys(session, address):
                used, first = self._spent(key, now)
                if used >= budget:
                    raise UserError(f"model time limit: {budget:.0f} s of the model every {self.window_s / 60:.0f} "
                                    f"minutes {what} on this server, used {used:.0f} s; try again in "
                                    f"{self.window_s - (now - first):.0f} s")

    def charge(self, session: str | None, address: str | None, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in [k for k, q in self._used.items() if not q or now - q[-1][0] >= self.window_s]:
                del self._used[key]
            for key, _, _ in self._keys(session, address):
                self._used.setdefault(key, deque()).append((now, seconds))

    def _keys(self, session: str | None, address: str | None) -> list[tuple[str, float, str]]:
        address = address or "unknown"
        return [(f"s:{session}" if session else f"n:{address}", self.per_session, "per session"),
                (f"a:{address}", self.per_address, "per client address")]

    def _spent(self, key: str, now: float) -> tuple[float, float]:
        charges = self._used.get(key, deque())
        while charges and now - charges[0][0] >= self.window_s:
            charges.popleft()
        return sum(s for _, s in charges), (charges[0][0] if charges else now)
