"""The two browser components the dashboard streams into: the side-by-side panes and the live chart.

Both are ``gr.HTML`` elements with a fixed template and a script that updates their DOM in place from
``props.value`` (``view.RunView.streams_value()`` / ``chart_value()``). The template never changes, so Gradio
never re-renders it; text reaches the page only through ``textContent``, so model or user text that
looks like HTML is shown as text and never run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr
import plotly

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

STREAMS_TEMPLATE = """
<div class="su-streams">
  <div class="su-legend">
    <label><input type="checkbox" class="su-shade-toggle" checked> colour tokens by the probe's log-odds</label>
    <span class="su-key"></span>
  </div>
  <div class="su-panes"><div class="su-empty">Press Generate: the baseline and each steered row stream here.</div></div>
</div>
"""

STREAMS_CSS = """
.su-streams { font-size: 14px; }
.su-legend { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin: 0 0 6px 2px;
             color: var(--body-text-color-subdued); font-size: 13px; }
.su-legend label { display: flex; gap: 6px; align-items: center; cursor: pointer; }
.su-key .yes { background: rgba(37, 99, 235, 0.35); padding: 0 4px; border-radius: 3px; }
.su-key .no { background: rgba(220, 38, 38, 0.35); padding: 0 4px; border-radius: 3px; }
.su-key .div { outline: 2px solid #f59e0b; padding: 0 4px; border-radius: 3px; }
.su-panes { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 10px; }
.su-empty { color: var(--body-text-color-subdued); padding: 24px; border: 1px dashed var(--border-color-primary);
            border-radius: 8px; text-align: center; }
.su-pane { border: 1px solid var(--border-color-primary); border-radius: 8px; display: flex;
           flex-direction: column; min-width: 0; background: var(--background-fill-primary); }
.su-head { display: flex; justify-content: space-between; gap: 8px; padding: 6px 10px;
           border-bottom: 1px solid var(--border-color-primary); font-weight: 600; }
.su-head .su-meta { font-weight: 400; color: var(--body-text-color-subdued); font-size: 12px; }
.su-body { white-space: pre-wrap; overflow-wrap: anywhere; padding: 8px 10px; line-height: 1.55;
           height: 300px; overflow-y: auto; font-family: var(--font-mono); font-size: 13px; }
.su-body .d { outline: 2px solid #f59e0b; border-radius: 2px; }
.su-body .t { border-bottom: 2px dashed #6b7280; }
.su-body .f { font-style: italic; color: #b45309; text-decoration: underline wavy #d97706; }
.su-streams.plain .su-body span { background: none !important; }
"""

STREAMS_JS = r"""
const panes = element.querySelector('.su-panes');
const key = element.querySelector('.su-key');
const toggle = element.querySelector('.su-shade-toggle');
toggle.addEventListener('change', () => {
  element.querySelector('.su-streams').classList.toggle('plain', !toggle.checked);
});
let run = null, built = [], updates = 0, fetching = false;

function shade(lo) {
  if (lo === null || lo === undefined) return '';
  const a = Math.min(Math.abs(lo) / 6, 1) * 0.45;
  return lo >= 0 ? `rgba(37, 99, 235, ${a})` : `rgba(220, 38, 38, ${a})`;
}

function pane(row) {
  const box = document.createElement('div'); box.className = 'su-pane';
  const head = document.createElement('div'); head.className = 'su-head';
  const title = document.createElement('span');
  const meta = document.createElement('span'); meta.className = 'su-meta';
  const body = document.createElement('div'); body.className = 'su-body';
  head.append(title, meta); box.append(head, body); panes.append(box);
  return {box, title, meta, body, n: 0, div: null, think: null};
}

function setKey(choices) {
  key.replaceChildren();
  if (!choices || choices.length < 2) return;
  const y = document.createElement('span'); y.className = 'yes'; y.textContent = 'leaning ' + choices[0];
  const n = document.createElement('span'); n.className = 'no'; n.textContent = 'leaning ' + choices[1];
  const d = document.createElement('span'); d.className = 'div'; d.textContent = 'first departure from baseline';
  key.append(y, ' ', n, ' ', d);
}

// Each update holds a row's tokens from index r.from on; append the ones not shown yet.
function apply(v) {
  if (v.run !== run || v.rows.length !== built.length) {
    panes.replaceChildren(); built = v.rows.map(pane); run = v.run; setKey(v.choices);
  }
  if (v.rows.some((r, i) => r.from > built[i].n)) return false;  // missed updates: a gap
  v.rows.forEach((r, i) => {
    const p = built[i];
    p.title.textContent = r.label; p.title.style.color = r.colour;
    const stick = p.body.scrollTop + p.body.clientHeight >= p.body.scrollHeight - 24;
    const frag = document.createDocumentFragment();
    const t = JSON.parse(r.t), lo = JSON.parse(r.lo), f = JSON.parse(r.f || '[]');
    for (let k = p.n - r.from; k < t.length; k++) {
      const s = document.createElement('span');
      s.textContent = t[k];  // text, never markup
      const bg = shade(lo[k]);
      if (bg) { s.style.background = bg; s.title = 'log-odds ' + lo[k].toFixed(2); }
      if (f[k]) {
        s.classList.add('f');
        s.title = 'inserted by the budget, not chosen by the model' + (s.title ? ' | ' + s.title : '');
      }
      frag.append(s);
    }
    p.body.append(frag); p.n = Math.max(p.n, r.from + t.length);
    if (r.div !== null && r.div !== p.div && p.body.children[r.div]) {
      const s = p.body.children[r.div]; s.classList.add('d');
      s.title = 'first token that differs from the baseline' + (s.title ? ' | ' + s.title : '');
      p.div = r.div;
    }
    if (r.think !== null && r.think !== p.think && p.body.children[r.think - 1]) {
      p.body.children[r.think - 1].classList.add('t'); p.think = r.think;
    }
    const ends = {eos: 'finished', length: 'length limit', cancelled: 'stopped'};
    const status = r.end ? (ends[r.end] || r.end) : 'streaming';
    const diverged = (i > 0 && r.div !== null) ? ` | departs at token ${r.div}` : '';
    p.meta.textContent = `${p.n} tokens | ${status}${diverged}`;
    if (stick) p.body.scrollTop = p.body.scrollHeight;
  });
  return true;
}

function render() {
  const v = props.value;
  if (!v || typeof v !== 'object' || !v.rows) return;
  element.dataset.updates = String(++updates);  // tests count what the browser was sent
  if (window.__suSkipUpdates > 0) { window.__suSkipUpdates--; return; }  // tests: simulate missed updates
  if (fetching || apply(v)) return;
  fetching = true;  // fetch the whole run once, then carry on with the live updates
  server.snapshot(v.run).then(full => {
    if (full && full.streams && full.streams.run === run) apply(full.streams);
  }).finally(() => { fetching = false; if (props.value && props.value.run === run) apply(props.value); });
}
render();
watch('value', render);
"""


CHART_TEMPLATE = """
<div class="su-chart-wrap">
  <div class="su-chart"></div>
  <div class="su-chart-note">Solid: log-odds of the probe's first choice over its second (left axis); with a
  gold answer, of the gold answer against every other answer. Dotted: probability mass on the choices
  (right axis). Faint stretches and x markers: too little mass on the choices to trust. Diamonds: where
  each row ended. Dashed verticals: end of thinking. Short ticks at the top: where a budget intervened;
  with a budget row, the strip below is each row's urge to stop, log p(end of thinking) where each token
  was chosen.</div>
</div>
"""

CHART_CSS = """
/* No empty frame before the first reading: the chart takes its room once it has points (draw()). */
.su-chart-wrap:not(.su-filled) { display: none; }
.su-chart { width: 100%; min-height: 320px; }
.su-chart-note { color: var(--body-text-color-subdued); font-size: 12px; margin: 2px 4px; }
"""

CHART_JS = r"""
const div = element.querySelector('.su-chart');
const config = {responsive: true, displaylogo: false,
                toImageButtonOptions: {format: 'png', filename: 'steer-ui-logodds', scale: 2}};
let run = null, acc = [], fetching = false, latest = null;

// Each update holds, per trace, its points from index v.from[i] on: keep the full series here.
function merge(v) {
  if (v.run !== run || acc.length !== v.data.length) {
    run = v.run; acc = v.data.map(() => ({x: [], y: [], s: []}));
  }
  if (v.data.some((t, i) => v.from[i] > acc[i].x.length)) return false;  // missed updates: a gap
  v.data.forEach((t, i) => {
    const a = acc[i], skip = a.x.length - v.from[i];
    const [x, y, s] = JSON.parse(v.points[i]);
    a.x.push(...x.slice(skip)); a.y.push(...y.slice(skip));
    if (s) a.s.push(...s.slice(skip));
  });
  latest = v;
  return true;
}

function draw() {
  if (!latest || !window.Plotly) return;
  const data = latest.data.map((t, i) => {
    const trace = {...t, x: acc[i].x, y: acc[i].y};
    if (t.marker && acc[i].s.length) trace.marker = {...t.marker, symbol: acc[i].s};
    return trace;
  });
  element.querySelector('.su-chart-wrap').classList.add('su-filled');  // shown before drawing: Plotly sizes to it
  const points = acc.reduce((n, a, i) => n + (latest.data[i].meta === 'readings' ? a.x.length : 0), 0);
  // react diffs against what is drawn: no re-mount, and uirevision (one per run) keeps the zoom.
  window.Plotly.react(div, data, {...latest.layout, datarevision: points}, config);
  div.dataset.points = String(points);
  div.dataset.run = latest.run;
}

// Drawing is the costly part in the browser: at most 5 redraws a second, the last value always drawn.
let pending = null, last = 0;
function schedule() {
  if (pending) return;
  const wait = Math.max(0, 200 - (performance.now() - last));
  pending = setTimeout(() => { pending = null; last = performance.now(); draw(); }, wait);
}

function update() {
  const v = props.value;
  if (!v || !v.data) return;
  if (window.__suSkipUpdates > 0) return;  // tests: simulate missed updates (the streams pane counts them)
  if (fetching) return;
  if (merge(v)) { schedule(); return; }
  fetching = true;
  server.snapshot(v.run).then(full => {
    if (full && full.chart && full.chart.run === v.run) { acc = []; run = null; merge(full.chart); }
  }).finally(() => { fetching = false; if (props.value && props.value.run === run) merge(props.value); schedule(); });
}
function whenReady(tries) {
  if (window.Plotly) { update(); return; }
  if (tries > 0) setTimeout(() => whenReady(tries - 1), 100);
}
whenReady(100);
watch('value', update);
"""


def plotly_head() -> str:
    # Relative URL: works behind a proxy or a Space's sub-path; the file is the installed plotly's, no CDN.
    return f'<script src="gradio_api/file={PLOTLY_JS}"></script>'


def static_paths() -> list[Path]:
    return [PLOTLY_JS]


def streams(snapshot: Callable[[str], dict], **kwargs) -> gr.HTML:
    """``snapshot(run_key)`` returns {"streams": ..., "chart": ...} in full, for a browser that missed updates."""
    return gr.HTML(value=None, html_template=STREAMS_TEMPLATE, css_template=STREAMS_CSS, js_on_load=STREAMS_JS,
                   server_functions=[snapshot], **kwargs)


def chart(snapshot: Callable[[str], dict], **kwargs) -> gr.HTML:
    return gr.HTML(value=None, html_template=CHART_TEMPLATE, css_template=CHART_CSS, js_on_load=CHART_JS,
                   head=plotly_head(), server_functions=[snapshot], **kwargs)
