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
import tempfile
from pathlib import Path

from steer_ui.errors import UserError
from steer_ui.log.store import new_id

SECRET_ENV = "STEER_UI_SESSION_SECRET"
_TOKEN = re.compile(r"([0-9a-f]{12})\.([0-9a-f]{32})")


def server_secret(cache_dir: Path) -> bytes:
    """``$STEER_UI_SESSION_SECRET``, else a random key kept (0600) in the cache dir across restarts."""
    return kept_secret(SECRET_ENV, cache_dir / "session-secret").encode()


SECRET_HEX = 64  # a kept secret is 32 random bytes as hex; anything else in the file is not one
MIN_ENV_SECRET = 16  # characters of a secret given in the environment


def kept_secret(env: str, path: Path) -> str:
    """``$env`` if set, else a random key made once and kept at ``path`` (0600), so it survives restarts;
    two processes starting at once agree on the first one written. The file is written whole under a
    temporary name and linked into place (a full disk leaves no file, never an empty one), and a file
    that does not hold a whole key is replaced: an empty key would sign sessions anyone can forge. An
    unwritable cache gives a key for this process only."""
    if os.environ.get(env):
        if len(os.environ[env]) < MIN_ENV_SECRET:
            raise UserError(f"${env} is {len(os.environ[env])} characters; a secret needs at least "
                            f"{MIN_ENV_SECRET} (leave it unset for a random one kept in the cache folder)")
        return os.environ[env]
    try:
        kept = _read_key(path)
        if kept is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_key(path, secrets.token_hex(SECRET_HEX // 2), replace=path.exists())
            kept = _read_key(path)
        if kept is not None:
            return kept
    except OSError:
        pass
    return secrets.token_hex(SECRET_HEX // 2)


def _read_key(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text if re.fullmatch(rf"[0-9a-f]{{{SECRET_HEX}}}", text) else None


def _write_key(path: Path, key: str, replace: bool) -> None:
    """The key in a temporary file, flushed to disk, then linked to ``path`` (first writer wins) or, for a
    damaged file, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if another process made the file first
            except FileExistsError:
                pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
