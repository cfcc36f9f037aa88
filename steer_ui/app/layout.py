"""The dashboard's page (Gradio 6): the title, the three tabs, and every event wired by name.

Model work (generate, load a model, compute a vector, sweep) shares one queue slot,
``concurrency_id="gpu"``: one model, one set of hooks, one job at a time. Cheap events (Stop, history,
vector info) skip the queue.
"""

from __future__ import annotations

import gradio as gr

from steer_ui.app.dashboard import Dashboard
from steer_ui.app.wiring import Components

CSS = """
.su-hint { color: var(--body-text-color-subdued); font-size: 13px; margin: 4px 0; }
.su-bars { display: flex; gap: 2px; align-items: flex-end; height: 64px; margin: 4px 0 8px; }
.su-bar { flex: 1; height: 100%; display: flex; flex-direction: column-reverse; align-items: stretch;
          position: relative; min-width: 8px; }
.su-bar i { display: block; background: #60a5fa; border-radius: 2px 2px 0 0; }
.su-bar span { font-size: 9px; text-align: center; color: var(--body-text-color-subdued); }
#su-title h2 { margin: 0 0 4px; }
"""

# One line at 1440 px: the first screen keeps its height for the form and the examples.
INTRO = ("## steer-ui\nSteer a model's chain of thought and watch it bend: the **baseline** and each **steered** row "
         "stream side by side while a suffix probe reads each row's answer log-odds from a fork of the KV cache.")


def build(dash: Dashboard, secret: str | None = None) -> gr.Blocks:
    """The page for ``dash``; ``secret`` encrypts each browser's session id in its local storage."""
    ui = Components()
    # Gradio's copies of downloads older than 2 h are deleted hourly (our own folders are pruned too).
    with gr.Blocks(title="steer-ui", fill_width=True, delete_cache=(3600, 7200)) as demo:
        ui.add("browser_id", gr.BrowserState("", storage_key="steer-ui-session", secret=secret or browser_secret()))
        gr.Markdown(INTRO, elem_id="su-title")
        with ui.add("tabs", gr.Tabs()):
            with gr.Tab("Generate", id="generate"):
                dash.generate.layout(ui)
            with gr.Tab("Sweep", id="sweep"):
                dash.sweep.layout(ui)
            with gr.Tab("History", id="history"):
                dash.history.layout(ui)
        dash.history.refresh_after(dash.generate.wire(ui), ui)
        dash.history.refresh_after(dash.sweep.wire(ui), ui)
        dash.history.wire(ui, demo)
    return demo


def browser_secret() -> str:
    """The key that encrypts each browser's session id in its local storage, kept across restarts.

    Gradio's default is a new random key per launch, which would give every browser a new, empty
    History after each restart.
    """
    from steer_ui.app.sessions import kept_secret
    from steer_ui.model.loading import default_cache_dir

    return kept_secret("STEER_UI_SECRET", default_cache_dir() / "browser-secret")
