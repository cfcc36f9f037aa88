"""Files the dashboard offers for download: a run as JSONL and CSV, its chart as a standalone page (on demand),
a session's export, a sweep's files, the vectors the server made (computed, trained, a reopened run's).

Every file lives in a folder keyed by what it is (a run's id, a session's pseudonym), written once and
reused however many times the run is opened; only the newest folders of each kind stay, so a
long-lived server does not fill its temp space. A run's chart page inlines plotly.js (~4.6 MB, so it
opens offline), which is why it is made only when asked for. Exports served to browsers carry no
session ids (``pseudonymous``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from steer_ui.log.archive import export, pseudonym
from steer_ui.log.store import Store
from steer_ui.vectors.files import save_vector
from steer_ui.vectors.vector import SteeringVector
from steer_ui.views.chart import figure, figure_html
from steer_ui.views.run_view import RunView

KEEP_FOLDERS = 32  # of each kind: run folders, session exports, sweeps, vectors
RUN_FORMATS = ((".jsonl", "jsonl"), (".csv", "csv"))


def run_downloads(store: Store, files: Path, run_id: str, view: RunView) -> list[str]:
    """The run as JSONL and CSV (runs, streams, probes), written once into the run's folder."""
    if not view.rows:
        return []
    folder = _folder(files, "run", run_id)
    wanted = [folder / f"steer-ui-{run_id}.jsonl"] + [folder / f"steer-ui-{run_id}_{t}.csv"
                                                      for t in ("runs", "streams", "probes")]
    if not all(p.is_file() for p in wanted) or view.done is None:  # a run still being written: write again
        for suffix, fmt in RUN_FORMATS:
            export(store, folder / f"steer-ui-{run_id}{suffix}", fmt, run_id=run_id, pseudonymous=True)
    return [str(p) for p in wanted]


def chart_page(files: Path, run_id: str, view: RunView) -> str:
    """The run's chart as a standalone HTML page (plotly.js inlined), made once when first asked for."""
    path = _folder(files, "run", run_id) / f"steer-ui-{run_id}-chart.html"
    if not path.is_file():
        path.write_text(figure_html(figure(view)), encoding="utf-8")
    return str(path)


def vector_copy(files: Path, vector: SteeringVector) -> Path:
    """A vector the server made or brought back (computed, trained, a reopened run's) as a file, in a folder
    named by its content hash: written once, and pruned with the other folders of its kind."""
    handle = vector_handle(vector)
    path = _folder(files, "vector", handle) / f"vector-{handle}.safetensors"
    return path if path.is_file() else save_vector(vector, path)


def stored_copy(files: Path, handle: str) -> Path | None:
    """The file of a ``vector_copy`` by its handle (None: no such copy, or pruned since)."""
    path = files / f"vector-{handle}" / f"vector-{handle}.safetensors"
    return path if len(handle) == 12 and all(c in "0123456789abcdef" for c in handle) and path.is_file() else None


def vector_handle(vector: SteeringVector) -> str:
    return vector.content_hash()[:12]


def session_folder(files: Path, session_id: str) -> Path:
    """Where a session's export goes: named by a one-way pseudonym of the session, never the session id."""
    return _folder(files, "session", pseudonym(session_id))


def sweep_folder(files: Path, name: str) -> Path:
    return _folder(files, "sweep", name)


def _folder(files: Path, kind: str, name: str) -> Path:
    folder = files / f"{kind}-{name}"
    new = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if new:
        prune(files, kind)
    else:
        folder.touch()  # in use again: the newest of its kind
    return folder


def prune(files: Path, kind: str, keep: int = KEEP_FOLDERS) -> None:
    """Only the newest ``keep`` folders of ``kind`` stay."""
    folders = sorted((p for p in files.glob(f"{kind}-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
