"""Files a finished run offers for download: the chart as a standalone page, the run as JSONL and CSV.

Each run's files live in their own folder under the app's files folder; only the newest folders stay,
so a long-lived server does not fill its temp space.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from steer_ui.log.archive import export
from steer_ui.log.store import Store
from steer_ui.views.chart import figure, figure_html
from steer_ui.views.run_view import RunView

KEEP_RUN_FOLDERS = 32


def run_downloads(store: Store, files: Path, run_id: str, view: RunView) -> list[str]:
    if not view.rows:
        return []
    folder = files / run_id
    folder.mkdir(exist_ok=True)
    prune(files)
    chart = folder / f"steer-ui-{run_id}-chart.html"
    chart.write_text(figure_html(figure(view)), encoding="utf-8")
    paths = export(store, folder / f"steer-ui-{run_id}.jsonl", "jsonl", run_id=run_id)
    paths += export(store, folder / f"steer-ui-{run_id}.csv", "csv", run_id=run_id)
    return [str(chart), *map(str, paths)]


def prune(files: Path, keep: int = KEEP_RUN_FOLDERS) -> None:
    folders = sorted((p for p in files.iterdir() if p.is_dir() and not p.name.startswith("sweep-")),
                     key=lambda p: p.stat().st_mtime)
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
