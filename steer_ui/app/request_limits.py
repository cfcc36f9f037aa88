"""Hosted mode's limits on what a request may send, before Gradio reads any of it.

Gradio reads a request's whole body before a handler runs, and its upload route takes any number of
files from anyone: four concurrent 200 MiB bodies added 1.46 GB of memory, and two requests of 30
files x 16 MB landed 960 MiB on disk in 3.5 s (kept for up to 2-3 hours). This ASGI middleware sits
in front of every route:

- a body may be at most ``Limits.body_mb`` (an upload: ``upload_mb``, one file's worth); a declared
  length over it is refused at once (413), and a body that turns out longer while it streams is cut off
  (the route sees the client go away);
- uploads are counted per client address in any hour, by number and by bytes
  (``uploads_per_hour``, ``upload_mb_per_hour``), and refused past either (429).

The address is the connection's (``scope["client"]``), as the rate limit's: headers such as
``X-Forwarded-For`` are the client's to forge. A reverse proxy in front should still cap connections
and body sizes itself (see docs/hosting.md, Security model).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from steer_ui.app.hosted import Limits

MB = 2**20
UPLOAD_PATH = "/gradio_api/upload"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around an upload's file


@dataclass
class UploadBudget:
    """Uploads per client address in any hour: how many and how many bytes."""

    count: int
    bytes: int
    _seen: dict[str, deque] = field(default_factory=dict)  # address -> (time, bytes) of its uploads
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, address: str, size: int, now: float | None = None) -> str | None:
        """Count an upload of ``size`` bytes from ``address``; why it is refused, or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in [k for k, q in self._seen.items() if not q or now - q[-1][0] >= 3600]:
                del self._seen[key]  # addresses quiet for an hour are forgotten
            seen = self._seen.setdefault(address, deque())
            while seen and now - seen[0][0] >= 3600:
                seen.popleft()
            if len(seen) >= self.count:
                return f"upload limit: {self.count} uploads an hour per client address on this server"
            if sum(b for _, b in seen) + size > self.bytes:
                return f"upload limit: {self.bytes // MB} MB an hour per client address on this server"
            seen.append((now, size))
            return None


class RequestLimits:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.uploads = UploadBudget(limits.uploads_per_hour, limits.upload_mb_per_hour * MB)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/").endswith(UPLOAD_PATH)
        cap = self.limits.upload_mb * MB + MULTIPART_SLACK if upload else self.limits.body_mb * MB
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await _refuse(scope, send, 413, f"the request body is {declared:,} bytes; this server's limit is {cap:,}")
            return
        if upload:
            address = (scope.get("client") or ("unknown",))[0]
            refused = self.uploads.admit(address, declared if declared is not None else cap)
            if refused is not None:
                await _refuse(scope, send, 429, refused)
                return
        await self.app(scope, _bounded(receive, cap), send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bounded(receive, cap: int):
    """``receive`` that ends the request (as a client that went away) once its body passes ``cap`` bytes:
    a body sent without a length, or longer than the one it declared."""
    got = 0

    async def bounded():
        nonlocal got
        message = await receive()
        if message["type"] == "http.request":
            got += len(message.get("body", b""))
            if got > cap:
                return {"type": "http.disconnect"}
        return message

    return bounded


async def _refuse(scope, send, status: int, message: str) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": message}, status_code=status)(scope, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}
