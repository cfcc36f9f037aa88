"""What the dashboard's handlers share: the loaded model (one per process), the session log, running runs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from steer_ui.app.hosted import Limits, ModelTime, RateLimiter
from steer_ui.app.live import LiveRun
from steer_ui.app.sessions import SessionTokens, server_secret
from steer_ui.errors import UserError
from steer_ui.log.store import Store
from steer_ui.model.loading import LoadedModel
from steer_ui.views.run_view import RunView

if TYPE_CHECKING:
    from steer_ui.experiments.cluster import Cluster

KEEP_VIEWS = 32  # runs whose full view a browser can fetch again (GenerateTab.snapshot)


@dataclass
class AppContext:
    lm: LoadedModel
    store: Store
    device: str = "auto"
    dtype: str = "auto"
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # hooks on the shared model
    active: dict[str, LiveRun] = field(default_factory=dict)  # by Gradio session hash: what Stop stops
    sweeps: dict[str, threading.Event] = field(default_factory=dict)  # likewise, the Sweep tab's Stop
    views: OrderedDict[str, RunView] = field(default_factory=OrderedDict)  # recent runs, for snapshots
    files: Path = field(default_factory=lambda: temp_folder())
    any_run_link: bool = True  # ?run=ID may open runs of other sessions (a local, single-user app)
    limits: Limits | None = None  # hosted mode: caps, rate limit, model allow-list (None: a local install)
    startup_model: str = ""
    rate: RateLimiter | None = None
    page_rate: RateLimiter | None = None  # page loads per client address (hosted)
    model_time: ModelTime | None = None  # seconds of the model per session and address (hosted)
    compile_on_cpu: bool = False  # --compile: compiled steps on CPU too (a CUDA GPU has them unless eager)
    eager: bool = False  # --eager: no compiled steps at all
    tokens: SessionTokens | None = None  # signs browser sessions (default: the secret in the cache dir)
    cluster: Cluster | None = None  # --ray: the Sweep tab's questions run on Ray workers there

    def __post_init__(self) -> None:
        if self.limits is not None:
            self.any_run_link = False  # hosted: a browser opens only its own runs
            self.rate = self.rate or RateLimiter(self.limits.runs_per_minute)
            self.page_rate = RateLimiter(self.limits.page_loads_per_minute, self.limits.page_loads_per_minute,
                                         unit="page loads")
            self.model_time = self.model_time or ModelTime(self.limits.model_seconds, 3 * self.limits.model_seconds)
        self.startup_model = self.startup_model or self.lm.model_id
        if self.tokens is None:
            from steer_ui.model.loading import default_cache_dir

            self.tokens = SessionTokens(server_secret(default_cache_dir()))

    def prepare(self, lm: LoadedModel) -> None:
        """Compiled steps for a newly loaded model, where there are any, warming in the background."""
        if self.eager:
            return
        from steer_ui.engine.fast_path import attach, common_shapes

        fast = attach(lm, compile_on_cpu=self.compile_on_cpu)
        if fast is not None:
            fast.warm_in_background(common_shapes(lm))

    @property
    def hosted(self) -> bool:
        return self.limits is not None

    def remember(self, view: RunView) -> None:
        """Keep ``view`` for snapshots (a browser that missed updates fetches it whole); the newest few only."""
        self.views[view.key] = view
        self.views.move_to_end(view.key)
        while len(self.views) > KEEP_VIEWS:
            self.views.popitem(last=False)

    def session_for(self, token: object) -> tuple[str, str]:
        """(session id, token) for a request: the session its token names if this server issued it, else a
        new one (a first visit, an API caller, or a token that does not verify). Nothing is written: a
        session gets its row in the log with its first run (``logged_session``), so a flood of tokenless
        calls leaves no rows behind."""
        sid = self.tokens.verify(token)
        if sid is None:
            sid, token = self.tokens.issue()
        return sid, str(token)

    def logged_session(self, sid: str, kind: str = "browser") -> str:
        """``sid``'s row in the log, made now if this is its first run (called once a run's input is checked)."""
        self.store.new_session(kind, session_id=sid)
        self.store.touch_session(sid)
        return sid

    def check_model_time(self, sid: str | None, request: object) -> None:
        """Before a job that holds the model: refused once its session or address spent its model time."""
        if self.model_time is not None:
            self.model_time.check(sid, _address(request))

    @contextmanager
    def hold_model(self, sid: str | None, request: object) -> Iterator[None]:
        """The model, for one job: the model lock, and on a server the time it was held charged to the job's
        session and address."""
        with self.model_lock:
            started = time.monotonic()
            try:
                yield
            finally:
                if self.model_time is not None:
                    self.model_time.charge(sid, _address(request), time.monotonic() - started)

    def session_of(self, token: object) -> str | None:
        """The session a token proves, without creating one (None: not a token of this server)."""
        return self.tokens.verify(token)

    def visible_run(self, run_id: str, token: object):
        """A logged run this browser may open: its session's on a server, any on a local install. The
        refusal names only the id (never the database, nor whether the run exists elsewhere)."""
        sid = self.session_of(token)
        try:
            return self.store.get_run(run_id, None if self.any_run_link else (sid or "-"))
        except UserError:
            raise UserError(f"no run {run_id[:40]!r}" + ("" if self.any_run_link else " in this session")) from None


def _address(request: object) -> str | None:
    return getattr(getattr(request, "client", None), "host", None)


TEMP_PREFIX = "steer-ui-app-"


def temp_folder() -> Path:
    """The app's folder for downloads, removed when the process exits (``atexit``; ``launch`` turns SIGTERM
    into an exit). Folders of earlier processes that were killed outright (SIGKILL, a crash) are removed
    here: the folder's name carries its process id and start time, so a live server's is left alone."""
    _remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{_me()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _me(pid: int | None = None) -> str:
    import psutil

    process = psutil.Process(pid)
    return f"{process.pid}.{int(process.create_time())}"


def _remove_orphans() -> None:
    import psutil

    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        owner = folder.name[len(TEMP_PREFIX):].split("-", 1)[0]
        pid, _, started = owner.partition(".")
        try:
            alive = _me(int(pid)) == owner
        except (ValueError, psutil.Error):
            alive = False
        if not alive and folder.is_dir() and folder.stat().st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)


def shown(err: UserError) -> gr.Error:
    """A user mistake as Gradio shows it: a red toast in the browser, an AppError for API clients."""
    return gr.Error(str(err), print_exception=False)
