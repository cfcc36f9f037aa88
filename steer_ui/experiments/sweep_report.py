"""A sweep's results read back: per-arm summary with paired statistics (``paired``), the table, the CSV
and JSON summaries, and the figures (accuracy and tokens per coefficient; the Pareto figure per arm).

``experiments.sweep`` runs the questions and appends ``results.csv``; everything here is computed from
those rows, so a resumed sweep's summary is the same as an uninterrupted one's.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from steer_ui import csv_cells
from steer_ui.experiments.arms import BASELINE, Arm, arm_of
from steer_ui.experiments.paired import Paired, mean_interval, paired, wilson
from steer_ui.experiments.questions import Question


@dataclass(frozen=True)
class CoefSummary:
    """One arm's results (named for the coefficients it began with: --coefs arms have one)."""

    coef: float | None  # None for a budget arm
    n: int
    correct: int
    accuracy: float
    ci_low: float  # Wilson 95 % interval
    ci_high: float
    no_answer: float  # share with no extractable answer
    mean_tokens: float
    mean_tokens_correct: float | None
    mean_final_logodds_gold: float | None  # yes/no questions: final log-odds toward the right answer
    forced_accuracy: float | None  # yes/no questions: the probe's answer after the chain, scored
    mean_final_p_gold: float | None = None  # the gold answer's probability where each row ended
    arm: str = ""
    mean_think_tokens: float | None = None
    flips: float | None = None  # mean flips of the probed answer (engine.dynamics)
    after_settle: float | None = None  # mean tokens generated after the answer settled
    vs_baseline: Paired | None = None  # None for the baseline itself, or when the sweep has no baseline arm



def summarise(rows: list[dict], arms: Sequence[Arm], questions: Sequence[Question]) -> list[CoefSummary]:
    """Per arm, in the sweep's order; each arm against the baseline arm, paired by question and sample."""
    kinds = {q.id: q for q in questions}
    mine_by_arm = {a.name: [r for r in rows if arm_of(r) == a.name and r["question_id"] in kinds] for a in arms}
    base = {(r["question_id"], int(r["sample"])): r for r in mine_by_arm.get(BASELINE, [])}
    return [_arm_summary(a, mine_by_arm[a.name], kinds, base if a.name != BASELINE and base else None)
            for a in arms]


def _arm_summary(arm: Arm, mine: list[dict], kinds: dict, base: dict | None) -> CoefSummary:
    n = len(mine)
    k = sum(int(r["correct"]) for r in mine)
    lo, hi = wilson(k, n)
    tokens = [int(r["cot_tokens"]) for r in mine]
    tokens_ok = [int(r["cot_tokens"]) for r in mine if int(r["correct"])]
    toward = [float(r["final_logodds"]) * (1 if kinds[r["question_id"]].answer.lower() in ("yes", "true") else -1)
              for r in mine if kinds[r["question_id"]].kind == "yesno" and r["final_logodds"] != ""]
    forced = [int(r["forced_correct"]) for r in mine if r.get("forced_correct", "") != ""]
    p_gold = [float(r["final_p_gold"]) for r in mine if r.get("final_p_gold", "") != ""]
    think = [int(r["think_tokens"]) for r in mine if r.get("think_tokens", "") != ""]
    flips = [int(r["flips"]) for r in mine if r.get("flips", "") != ""]
    after = [int(r["cot_tokens"]) - int(r["settled_at"]) for r in mine if r.get("settled_at", "") != ""]
    vs = None
    if base is not None:
        both = [(r, base[(r["question_id"], int(r["sample"]))]) for r in mine
                if (r["question_id"], int(r["sample"])) in base]
        vs = paired([bool(int(a["correct"])) for a, _ in both], [bool(int(b["correct"])) for _, b in both],
                    [int(a["cot_tokens"]) for a, _ in both], [int(b["cot_tokens"]) for _, b in both])
    return CoefSummary(
        coef=arm.coef, n=n, correct=k, accuracy=k / n if n else 0.0, ci_low=lo, ci_high=hi,
        no_answer=sum(1 for r in mine if r["how"] == "none") / n if n else 0.0,
        mean_tokens=sum(tokens) / n if n else 0.0,
        mean_tokens_correct=sum(tokens_ok) / len(tokens_ok) if tokens_ok else None,
        mean_final_logodds_gold=sum(toward) / len(toward) if toward else None,
        forced_accuracy=sum(forced) / len(forced) if forced else None,
        mean_final_p_gold=sum(p_gold) / len(p_gold) if p_gold else None,
        arm=arm.name, mean_think_tokens=_mean(think), flips=_mean(flips), after_settle=_mean(after), vs_baseline=vs)


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _opt(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _token_diff(v: Paired | None) -> str:
    if v is None or v.token_diff is None:
        return "-"
    ci = f" ({v.token_diff_ci[0]:+.1f}, {v.token_diff_ci[1]:+.1f})" if v.token_diff_ci else ""
    return f"{v.token_diff:+.1f}{ci}"


# The summary's columns, declared once for the text table (summary.txt, stdout) and the Sweep tab's table:
# (header, width in the text table, the cell).
COLUMNS: tuple[tuple[str, int, Callable[[CoefSummary], str]], ...] = (
    ("n", 4, lambda s: str(s.n)),
    ("accuracy", 8, lambda s: f"{s.accuracy:.1%}"),
    ("95% CI", 13, lambda s: f"{s.ci_low:.1%}-{s.ci_high:.1%}"),
    ("no answer", 9, lambda s: f"{s.no_answer:.1%}"),
    ("CoT tokens", 10, lambda s: f"{s.mean_tokens:.1f}"),
    ("(correct)", 9, lambda s: _opt(s.mean_tokens_correct, ".1f")),
    ("think", 7, lambda s: _opt(s.mean_think_tokens, ".1f")),
    ("flips", 5, lambda s: _opt(s.flips, ".2f")),
    ("final log-odds to gold", 22, lambda s: _opt(s.mean_final_logodds_gold, "+.2f")),
    ("forced acc", 10, lambda s: _opt(s.forced_accuracy, ".1%")),
    ("final P(gold)", 13, lambda s: _opt(s.mean_final_p_gold, ".3f")),
    ("vs baseline: +/-", 16,
     lambda s: f"+{s.vs_baseline.only_arm}/-{s.vs_baseline.only_baseline}" if s.vs_baseline else "-"),
    ("McNemar p", 9, lambda s: f"{s.vs_baseline.p_value:.3g}" if s.vs_baseline else "-"),
    ("tokens diff (95% CI)", 24, lambda s: _token_diff(s.vs_baseline)),
)


def summary_rows(summary: list[CoefSummary]) -> tuple[list[str], list[list[str]]]:
    """The headers and a row of cells per arm (the arm's name first)."""
    return ["arm", *(h for h, _, _ in COLUMNS)], [[s.arm, *(cell(s) for _, _, cell in COLUMNS)] for s in summary]


def summary_table(summary: list[CoefSummary]) -> str:
    headers, rows = summary_rows(summary)
    width = max([len("arm")] + [len(r[0]) for r in rows])
    widths = [width, *(w for _, w, _ in COLUMNS)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [headers, *rows])


def write_summary(summary: list[CoefSummary], out: Path) -> None:
    """summary.csv (a row per arm), summary.txt (the table) and summary.json (arms with paired statistics)."""
    flat = [{**{k: v for k, v in asdict(s).items() if k != "vs_baseline"},
             **{f"vs_baseline_{k}": v for k, v in (s.vs_baseline.to_dict() if s.vs_baseline else {}).items()}}
            for s in summary]
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in flat for k in row)))
        writer.writeheader()
        writer.writerows(csv_cells.row(r) for r in flat)
    (out / "summary.txt").write_text(summary_table(summary) + "\n", encoding="utf-8")
    arms = [{"arm": s.arm, "n": s.n, "correct": s.correct, "accuracy": s.accuracy, "ci": [s.ci_low, s.ci_high],
             "mean_cot_tokens": s.mean_tokens, "mean_think_tokens": s.mean_think_tokens, "flips": s.flips,
             "after_settle": s.after_settle, "coef": s.coef,
             "vs_baseline": s.vs_baseline.to_dict() if s.vs_baseline else None} for s in summary]
    (out / "summary.json").write_text(json.dumps({"arms": arms}, indent=1), encoding="utf-8")


def token_interval(rows: list[dict], arm: str) -> tuple[float, float] | None:
    """A bootstrap interval of an arm's mean chain-of-thought tokens (the Pareto figure's horizontal bar)."""
    tokens = [int(r["cot_tokens"]) for r in rows if arm_of(r) == arm]
    return mean_interval(tokens)


def figure(summary: list[CoefSummary], title: str = "") -> dict:
    """Accuracy (with its interval) and mean chain-of-thought length against the coefficient (the arms
    that have one: --coefs arms and vector arms)."""
    summary = sorted((s for s in summary if s.coef is not None), key=lambda s: s.coef)
    xs = [s.coef for s in summary]
    return {
        "data": [
            {"type": "scatter", "mode": "lines+markers", "name": "accuracy", "x": xs,
             "y": [s.accuracy for s in summary], "line": {"color": "#2563eb"},
             "error_y": {"type": "data", "symmetric": False, "array": [s.ci_high - s.accuracy for s in summary],
                         "arrayminus": [s.accuracy - s.ci_low for s in summary]}},
            *([{"type": "scatter", "mode": "lines+markers", "name": "forced answer accuracy (probe)", "x": xs,
                "y": [s.forced_accuracy for s in summary], "line": {"color": "#2563eb", "dash": "dash", "width": 1}}]
              if any(s.forced_accuracy is not None for s in summary) else []),
            {"type": "scatter", "mode": "lines+markers", "name": "mean CoT tokens", "x": xs,
             "y": [s.mean_tokens for s in summary], "yaxis": "y2", "line": {"color": "#dc2626", "dash": "dot"}},
        ],
        "layout": {
            "title": {"text": title}, "height": 380, "margin": {"l": 60, "r": 60, "t": 50, "b": 50},
            "xaxis": {"title": {"text": "steering coefficient"}},
            "yaxis": {"title": {"text": "accuracy (95% Wilson interval)"}, "range": [0, 1.05], "tickformat": ".0%"},
            "yaxis2": {"title": {"text": "mean chain-of-thought tokens"}, "overlaying": "y", "side": "right",
                       "rangemode": "tozero", "showgrid": False},
            "legend": {"orientation": "h", "y": -0.2}, "plot_bgcolor": "#ffffff",
        },
    }


def pareto_figure(summary: list[CoefSummary], intervals: dict[str, tuple[float, float] | None],
                  title: str = "") -> dict:
    """Accuracy against mean chain-of-thought tokens, one point per arm with both intervals (Wilson for
    accuracy, bootstrap for tokens): what each arm buys in accuracy for the tokens it spends."""
    def bar(s, side):
        ci = intervals.get(s.arm)
        return (ci[1] - s.mean_tokens if side else s.mean_tokens - ci[0]) if ci else 0.0
    return {
        "data": [{"type": "scatter", "mode": "markers+text", "name": s.arm, "x": [s.mean_tokens], "y": [s.accuracy],
                  "text": [s.arm], "textposition": "top center", "marker": {"size": 11},
                  "error_y": {"type": "data", "symmetric": False, "array": [s.ci_high - s.accuracy],
                              "arrayminus": [s.accuracy - s.ci_low]},
                  "error_x": {"type": "data", "symmetric": False, "array": [bar(s, True)],
                              "arrayminus": [bar(s, False)]}} for s in summary],
        "layout": {
            "title": {"text": title}, "height": 420, "margin": {"l": 60, "r": 30, "t": 50, "b": 50},
            "xaxis": {"title": {"text": "mean chain-of-thought tokens (95% bootstrap interval)"}},
            "yaxis": {"title": {"text": "accuracy (95% Wilson interval)"}, "range": [0, 1.05], "tickformat": ".0%"},
            "showlegend": False, "plot_bgcolor": "#ffffff",
        },
    }


def find_browser() -> None:
    """kaleido renders PNGs with a Chrome/Chromium: point it at the system's when it has no other."""
    if "BROWSER_PATH" not in os.environ:
        found = shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chromium-browser")
        if found:
            os.environ["BROWSER_PATH"] = found


def write_figure(summary: list[CoefSummary], out: Path, title: str = "",
                 intervals: dict[str, tuple[float, float] | None] | None = None) -> list[str]:
    """figure.html (per coefficient, when arms have one) and pareto.html (every arm) always; their PNGs when
    kaleido finds a Chrome/Chromium. Returns notes for the user."""
    import plotly.graph_objects as go

    figures = {"pareto": pareto_figure(summary, intervals or {}, title)}
    if any(s.coef is not None for s in summary):
        figures["figure"] = figure(summary, title)
    notes = []
    for name, spec in figures.items():
        fig = go.Figure(spec)
        fig.write_html(out / f"{name}.html", include_plotlyjs=True)
        try:
            _png(fig, out / f"{name}.png")
        except Exception as err:  # noqa: BLE001 - no kaleido or no browser: the HTML figure is still there
            notes.append(f"{name}.png not written ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); {name}.html has the same chart")
    return notes


def _png(fig, path: Path) -> None:
    """kaleido renders a PNG in a Chrome it starts for each image (~2.3 s here); one kept for the process
    (kaleido's sync server, started at the first image, gone with the process) renders the next in ~0.2 s:
    a sweep's two figures (HTML and PNG) took 5.0 s each time; now 3.2 s in a fresh process, 0.7 s in one
    that drew before (the dashboard, the test suite)."""
    import warnings

    import kaleido

    find_browser()
    kaleido.start_sync_server(silence_warnings=True)
    with warnings.catch_warnings():  # plotly passes its kaleido options, which a running server ignores
        warnings.simplefilter("ignore", UserWarning)
        fig.write_image(path, width=900, height=420, scale=2)
