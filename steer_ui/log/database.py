"""Opening the session log's database: where it lives, SQLite's pragmas, migrations, writer ownership."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from sqlalchemy.engine import Engine, make_url

from steer_ui.errors import UserError


def default_db_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "steer-ui" / "runs.sqlite"


def resolve_db_url(db: str | None = None) -> str:
    """``--db`` (a path or SQLAlchemy URL), else ``$STEER_UI_DB``, else the user data dir."""
    db = db or os.environ.get("STEER_UI_DB") or str(default_db_path())
    if "://" in db:
        return db
    path = Path(db).expanduser()
    if path.is_dir():
        raise UserError(f"--db {db} is a folder; give a file path such as {path / 'runs.sqlite'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder for the database {path}: {err.strerror}") from None
    return f"sqlite:///{path}"


def display_url(url: str) -> str:
    """``url`` as messages may show it: the password of a server URL hidden (``***``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not parseable as a URL, so where a password sits is unknown: show none
        scheme = url.split("://", 1)[0]
        shown = f"{scheme}://" if re.fullmatch(r"[A-Za-z][\w+.-]{0,30}", scheme) else ""
        return f"{shown}(not a valid URL)"


def sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; a crash leaves a consistent database. busy_timeout: two
    # processes logging at once wait for each other instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def owner_tag() -> str:
    import psutil

    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{int(me.create_time())}"


def owner_alive(tag: str | None) -> bool:
    import psutil

    if not tag:
        return False
    try:
        host, pid, started = tag.rsplit(":", 2)
        if host != socket.gethostname():
            return True  # another machine's run: not ours to judge
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except (ValueError, psutil.Error):
        return False


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations copy a table and drop the old one; with foreign keys on, dropping runs would
            # cascade to every stream and probe point. The pragma only takes effect outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        cfg.attributes["connection"] = conn
        _refuse_newer(cfg, conn)
        command.upgrade(cfg, "head")
        conn.commit()
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def _refuse_newer(cfg, conn) -> None:
    """A log a newer steer-ui wrote (a revision this one does not know) is one message, not alembic's
    traceback: nothing is changed in it."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    current = MigrationContext.configure(conn).get_current_heads()
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        newest = ScriptDirectory.from_config(cfg).get_current_head()
        raise UserError(f"the session log {display_url(str(conn.engine.url))} was written by a newer steer-ui "
                        f"(schema revision {', '.join(unknown)}; this version knows up to {newest}): upgrade "
                        "steer-ui, or use another --db")
