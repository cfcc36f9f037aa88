"""CLI consumers of the event stream: JSON lines for scripts, a side-by-side view for people."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from typing import TextIO

from steer_ui.engine.events import DoneEvent, Event, InterveneEvent, ProbeEvent, StartEvent, TokenEvent
from steer_ui.vectors.layers import format_layers


class JsonlPrinter:
    """One JSON object per event on stdout, flushed at once so a pipe sees tokens as they come."""

    def __init__(self, out: TextIO):
        self.out = out

    def __call__(self, event: Event) -> None:
        self.out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
        self.out.flush()


def first_divergence(baseline: list[int], steered: list[int]) -> int | None:
    """Index of the first generated token where ``steered`` departs from ``baseline`` (None: never)."""
    for i, (a, b) in enumerate(zip(baseline, steered)):
        if a != b:
            return i
    return None if len(baseline) == len(steered) else min(len(baseline), len(steered))


class SideBySidePrinter:
    """Live progress on stderr while decoding; the rows in columns and the probe curve at the end."""

    MAX_PROBE_LINES = 24

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err
        self.live = err.isatty()
        self.start: StartEvent | None = None
        self.probes: dict[int, list[ProbeEvent]] = {}
        self.notes: dict[int, list[InterveneEvent]] = {}
        self.steps = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self._on_start(event)
        elif isinstance(event, TokenEvent):
            self.steps = max(self.steps, event.step + 1)
            if self.live and event.row == 0:
                self.err.write(f"\r  generating: {self.steps} tokens")
                self.err.flush()
        elif isinstance(event, ProbeEvent):
            self.probes.setdefault(event.row, []).append(event)
        elif isinstance(event, InterveneEvent):
            self.notes.setdefault(event.row, []).append(event)
        elif isinstance(event, DoneEvent):
            if self.live:
                self.err.write("\r" + " " * 40 + "\r")
            self._on_done(event)

    def _on_start(self, ev: StartEvent) -> None:
        self.start = ev
        rows = ", ".join(r.label for r in ev.rows)
        layers = f"layers {format_layers(ev.layers)}" if ev.layers else "no steering"
        self.err.write(f"{ev.model} | {len(ev.prompt_ids)} prompt tokens | rows: {rows} | {layers} | "
                       f"scope {ev.scope} | probe every {ev.probe_every or 'off'}\n")
        for w in ev.warnings:
            self.err.write(f"warning: {w}\n")
        self.err.flush()

    def _on_done(self, ev: DoneEvent) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        col = max(20, (width - 3 * (len(ev.rows) - 1)) // len(ev.rows))
        ends = [f"({r.finish_reason}, {len(r.token_ids)} tok)" for r in ev.rows]
        heads = [[f"{r.label} {end}"] for r, end in zip(ev.rows, ends)]
        if any(len(h[0]) > col for h in heads):  # long labels (mixed rows): the outcome on a line of its own
            heads = [[r.label, end] for r, end in zip(ev.rows, ends)]
        columns = [_wrap(r.text, col) for r in ev.rows]
        height = max(len(c) for c in columns)
        w = self.out.write
        for line in zip(*heads):
            w(" | ".join(h[:col].ljust(col) for h in line).rstrip() + "\n")
        w("-+-".join("-" * col for _ in ev.rows) + "\n")
        for i in range(height):
            w(" | ".join((c[i] if i < len(c) else "").ljust(col) for c in columns).rstrip() + "\n")
        base = ev.rows[0].token_ids
        for r in ev.rows[1:]:
            d = first_divergence(base, r.token_ids)
            where = "identical to the baseline" if d is None else f"departs from the baseline at token {d}"
            w(f"\n{r.label}: {where}")
        w("\n")
        for line in self._dynamics_lines(ev):
            w(line + "\n")
        self._probe_table(ev)
        t = ev.timing
        rate = t.steps / t.decode_s if t.decode_s > 0 else float("nan")
        self.err.write(f"load {t.load_s:.1f} s | prefill {t.prefill_s:.2f} s | decode {t.steps} steps in "
                       f"{t.decode_s:.1f} s ({rate:.1f} steps/s, {len(ev.rows)} row{'s' if len(ev.rows) > 1 else ''}"
                       f"{', ' + t.path if t.path else ''})\n")
        self.out.flush()

    def _dynamics_lines(self, ev: DoneEvent) -> list[str]:
        """Per row: how its probed answer moved (engine.dynamics) and where its budget intervened."""
        lines = []
        for r in ev.rows:
            parts = []
            if r.dynamics is not None:
                d = r.dynamics
                parts.append(f"answer flipped {d.flips} time{'s' if d.flips != 1 else ''}, settled at token "
                             f"{d.settled_at} ({d.after_settle} tokens after)")
            notes = self.notes.get(r.row, [])
            if notes:
                shown = ", ".join(f"{n.kind} {n.text!r} at {n.step}" for n in notes[:6])
                parts.append(f"{len(notes)} intervention{'s' if len(notes) > 1 else ''}: {shown}"
                             f"{', ...' if len(notes) > 6 else ''}")
            if r.think_tokens is not None and (notes or r.row and self.start and self.start.rows[r.row].budget):
                parts.append(f"{r.think_tokens} thinking tokens")
            if parts:
                lines.append(f"{r.label}: " + "; ".join(parts))
        return lines

    def _probe_table(self, ev: DoneEvent) -> None:
        if not self.probes:
            return
        steps = sorted({p.step for ps in self.probes.values() for p in ps})
        stride = max(1, -(-len(steps) // self.MAX_PROBE_LINES))
        finals = {p.row: p for ps in self.probes.values() for p in ps if p.final}
        shown = sorted(set(steps[::stride]) | {steps[-1]} | {p.step for p in finals.values()})
        by = {(p.row, p.step): p for ps in self.probes.values() for p in ps}  # a final reading wins its step
        w = self.out.write
        gold = self.start.probe_gold if self.start else None
        what = f"log p({gold}) - log(1 - p({gold}))" if gold else "logp(first) - logp(second)"
        w(f"\nprobe log-odds {what}; '?' = unreliable (little mass on the choices), '*' = where the row ended\n")
        widths = [max(14, len(r.label) + 2) for r in ev.rows]  # a column fits its row's label
        w("step  " + "".join(f"{r.label:>{n}}" for r, n in zip(ev.rows, widths)) + "\n")
        for s in shown:
            cells = []
            for r, n in zip(ev.rows, widths):
                p = by.get((r.row, s))
                mark = ("" if p.reliable else "?") + ("*" if p.final else "") if p else ""
                cells.append(" " * n if p is None else f"{p.logodds:+.2f}{mark}".rjust(n))
            w(f"{s:>4}  " + "".join(cells) + "\n")
        self._final_probabilities(ev, finals)

    def _final_probabilities(self, ev: DoneEvent, finals: dict[int, ProbeEvent]) -> None:
        """Each choice's probability where each row ended: the answer the probe reads off its last token."""
        if not finals:
            return
        w = self.out.write
        w("\nwhere each row ended, p(answer):\n")
        for r in ev.rows:
            p = finals.get(r.row)
            if p is not None:
                cells = "  ".join(f"{label} {math.exp(v):.3g}" for label, v in p.logprobs.items())
                w(f"  {r.label:<14} step {p.step:>4}  {cells}\n")


def _wrap(text: str, width: int) -> list[str]:
    """Wrapped lines; runs of blank lines (a collapsed model emits hundreds) shown as one."""
    lines: list[str] = []
    for para in text.split("\n"):
        for line in textwrap.wrap(para, width) or [""]:
            if line or (lines and lines[-1]):
                lines.append(line)
    return lines


def print_vector_report(out: TextIO, vector, lm=None) -> None:
    """Layers, norms, stored separation stats and (with a model) logit-lens tokens of ``vector``."""
    from steer_ui.vectors.guidance import logit_lens

    meta = vector.metadata
    stats = {s["layer"]: s for s in json.loads(meta.get("layer_stats", "[]"))}
    head = [f"{vector.name}", f"{len(vector.layers)} layers ({_span_text(vector.layers)})",
            f"hidden {vector.hidden_size}", f"model hint {vector.model_hint or '?'}"]
    for key in ("method", "objective", "pairs", "examples", "steps", "stopped", "heldout_loss",
                "baseline_heldout_loss", "source", "suggested_band", "created"):
        if meta.get(key):
            head.append(f"{key.replace('_', ' ')} {meta[key]}")
    out.write(" | ".join(head) + "\n")
    # Trained vectors have no pair statistics; their bias is read against the layer's typical activation.
    act = {int(k): v for k, v in json.loads(meta.get("act_norms", "{}")).items()} if not stats else {}
    cols = "layer     |v|"
    if stats:
        cols += "  pair-acc  effect   mean|h|  rel/coef  coef@0.5"
    elif act:
        cols += "   mean|h|       rel"
    if lm is not None:
        cols += "  logit lens: promotes / suppresses"
    out.write(cols + "\n")
    for layer in vector.layers:
        v = vector.directions[layer]
        line = f"{layer:>5} {float(v.norm()):>7.3f}"
        s = stats.get(layer)
        if s:
            rel = s["relative_norm"]
            line += (f"  {s['pair_accuracy']:>8.2f}  {s['effect_size']:>6.2f}  {s['act_norm']:>8.1f}"
                     f"  {rel:>8.4f}  {0.5 / rel if rel > 0 else float('nan'):>8.1f}")
        elif stats:
            line += " " * 46
        elif act:
            h = act.get(layer)
            line += f"  {h:>8.1f}  {float(v.norm()) / h:>8.4f}" if h else " " * 20
        if lm is not None:
            up, down = logit_lens(lm, v, k=4)
            line += f"  {' '.join(repr(t) for t in up)} / {' '.join(repr(t) for t in down)}"
        out.write(line + "\n")
    if stats:
        out.write("rel/coef = ||v_L|| / mean ||h_L||: the relative dose of coefficient 1; coef@0.5 = the "
                  "coefficient for a dose of 0.5\n")
    elif act:
        out.write("rel = ||bias_L|| / mean ||h_L|| over the training prompts: the learned bias against the "
                  "layer's typical activation\n")


def _span_text(layers: list[int]) -> str:
    return format_layers(layers)
