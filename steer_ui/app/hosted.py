"""Hosted mode: caps on what one request may ask for, a per-session rate limit, a model allow-list.

Off for a local install (everything allowed); on with ``python app.py --hosted`` or
``STEER_UI_HOSTED=1``. Every refusal is a UserError that names the limit and its value. The caps can be
changed through environment variables (``STEER_UI_MAX_NEW_TOKENS=1024`` and so on; see README).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields

from steer_ui.errors import UserError


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int = 512
    prompt_chars: int = 4000
    steered_rows: int = 4
    pairs: int = 200
    upload_mb: int = 16
    sweep_questions: int = 20
    queue_size: int = 16
    runs_per_minute: int = 6  # per browser session: generations, vector computations and sweeps
    allowed_models: tuple[str, ...] = ()  # besides the model loaded at start; () = that one only

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults, overridden by STEER_UI_<FIELD> variables (STEER_UI_ALLOWED_MODELS: comma-separated)."""
        values: dict = {}
        for f in fields(cls):
            raw = os.environ.get(f"STEER_UI_{f.name.upper()}")
            if raw is None:
                continue
            if f.name == "allowed_models":
                values[f.name] = tuple(m.strip() for m in raw.split(",") if m.strip())
                continue
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise UserError(f"STEER_UI_{f.name.upper()} must be a whole number, got {raw!r}") from None
            if values[f.name] < 1:
                raise UserError(f"STEER_UI_{f.name.upper()} must be >= 1, got {raw!r}")
        return cls(**values)

    def check_run(self, prompt: str, max_new_tokens: int, steered_rows: int) -> None:
        if len(prompt) > self.prompt_chars:
            raise UserError(f"the prompt is {len(prompt)} characters; this server's limit is {self.prompt_chars}")
        if max_new_tokens > self.max_new_tokens:
            raise UserError(f"max new tokens {max_new_tokens} is above this server's limit of {self.max_new_tokens}")
        if steered_rows > self.steered_rows:
            raise UserError(f"{steered_rows} steered rows asked; this server's limit is {self.steered_rows}")

    def check_file(self, path: str | None, what: str) -> None:
        if path and os.path.getsize(path) > self.upload_mb * 2**20:
            raise UserError(f"the {what} is larger than this server's upload limit of {self.upload_mb} MB")

    def check_model(self, spec: str, startup_model: str) -> None:
        allowed = (startup_model, *self.allowed_models)
        if spec.strip() not in allowed:
            raise UserError(f"this server only loads: {', '.join(allowed)}")


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
