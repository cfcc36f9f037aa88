"""Hosted mode: caps on what one request may ask for, a per-session rate limit, a model allow-list.

Caps on run knobs (max new tokens, prompt length) are declared with the knobs themselves
(``Knob.hosted_cap``); the others (steered rows, pairs, uploads, ...) belong to hosting alone.

Off for a local install (everything allowed); on with ``python app.py --hosted`` or
``STEER_UI_HOSTED=1``. Every refusal is a UserError that names the limit and its value. The caps can be
changed through environment variables (``STEER_UI_MAX_NEW_TOKENS=1024`` and so on; see README).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import gradio as gr

from steer_ui.engine.knobs import KNOBS, Knob
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError

# Caps on run knobs come from the knobs' own declarations: (cap name, knob).
KNOB_CAPS: dict[str, Knob] = {k.hosted_cap[0]: k for k in KNOBS if k.hosted_cap}


def _default_caps() -> dict[str, int]:
    return {name: k.hosted_cap[1] for name, k in KNOB_CAPS.items()}


@dataclass(frozen=True)
class Limits:
    caps: Mapping[str, int] = field(default_factory=_default_caps)  # knob caps: max_new_tokens, prompt_chars
    steered_rows: int = 4
    pairs: int = 200
    upload_mb: int = 16
    sweep_questions: int = 20
    queue_size: int = 16
    runs_per_minute: int = 6  # per browser session: generations, vector computations and sweeps
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
    """At most ``per_minute`` admissions per key in any 60 s window."""

    per_minute: int
    _seen: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and now - times[0] >= 60:
                times.popleft()
            if len(times) >= self.per_minute:
                wait = 60 - (now - times[0])
                raise UserError(f"rate limit: {self.per_minute} runs a minute per session on this server; "
                                f"try again in {wait:.0f} s")
            times.append(now)


def rate_validator(rate: RateLimiter | None) -> Callable:
    """Hosted mode's rate limit as a Gradio validator: it runs before the request takes a queue slot, with
    the event's inputs by name, and answers one ``gr.validate`` per input (the first carries a refusal).
    The limit is keyed by the browser session, else the client's address."""
    def validator(*args, request: gr.Request = None, **inputs) -> list[dict]:
        ok = [gr.validate(True, "") for _ in range(len(args) + len(inputs))]
        if rate is None:
            return ok
        client = getattr(getattr(request, "client", None), "host", None)
        try:
            rate.admit(str(inputs.get("browser_id") or client or "anonymous"))
        except UserError as err:
            return [gr.validate(False, str(err)), *ok[1:]]
        return ok

    return validator
