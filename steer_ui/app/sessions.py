"""Browser sessions the server issues and can verify: a session id plus an HMAC of it under a server secret.

A browser's History, exports and ``?run=`` links are its session's. The session used to be whatever id
the client sent (a ``gradio_client`` caller could pick any, or a fresh one per call to dodge the rate
limit), and the key that encrypted it in the browser is sent to every visitor in Gradio's ``/config``.
Now the client holds a token ``<id>.<hmac>``: only the server, which keeps the secret in its cache
directory (never in a page), can make one, so a client can present a session it was given but not
invent or guess one. The token is the credential; the session id alone, which the log and exports
may carry, opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from steer_ui.log.store import new_id

SECRET_ENV = "STEER_UI_SESSION_SECRET"
_TOKEN = re.compile(r"([0-9a-f]{12})\.([0-9a-f]{32})")


def server_secret(cache_dir: Path) -> bytes:
    """``$STEER_UI_SESSION_SECRET``, else a random key kept (0600) in the cache dir across restarts."""
    return kept_secret(SECRET_ENV, cache_dir / "session-secret").encode()


def kept_secret(env: str, path: Path) -> str:
    """``$env`` if set, else a random key made once and kept at ``path`` (0600), so it survives restarts;
    two processes starting at once agree on the first one written. An unwritable cache gives a key for
    this process only."""
    if os.environ.get(env):
        return os.environ[env]
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            except FileExistsError:  # another process made it first: use theirs
                pass
        return path.read_text().strip()
    except OSError:
        return secrets.token_hex(32)


class SessionTokens:
    """Issues and verifies session tokens under one secret."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> tuple[str, str]:
        """A new session: (its id, its token)."""
        session_id = new_id()
        return session_id, f"{session_id}.{self._mac(session_id)}"

    def verify(self, token: object) -> str | None:
        """The session id of a token this server issued; None for anything else (any type, any size)."""
        if not isinstance(token, str) or len(token) > 64:
            return None
        m = _TOKEN.fullmatch(token)
        if m is None or not hmac.compare_digest(m.group(2), self._mac(m.group(1))):
            return None
        return m.group(1)
