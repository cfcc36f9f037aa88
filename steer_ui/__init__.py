"""steer-ui: watch activation steering bend a reasoning model's chain of thought, token by token.

From Python (a notebook, a script)::

    import steer_ui

    model = steer_ui.load()                      # the bundled SmolLM2-135M-Instruct (offline), or a hub id
    vec = model.vector("reconsideration")        # a preset, a vector file, or model.compute_vector(pairs)
    run = model.compare("Is 91 prime? Answer Yes or No.", rows=[(vec, 4), (vec, 8)], layers="15-18",
                        probe_every=1)
    run                                          # in Jupyter: the rows side by side and the log-odds chart
    run.to_pandas(); run.figure(); run.save()    # a tidy frame, a plotly Figure, the session log

Public names: ``load`` -> ``Model`` (``vector``, ``compute_vector``, ``compare``, ``settings``, ``run``,
``sweep``); ``Run`` (``rows``, ``to_pandas``, ``figure``, ``save``) and its ``Row``; ``open_run`` for any
logged run; ``sweep`` -> ``SweepRun``; ``load_vector`` / ``save_vector`` and ``SteeringVector``;
``RunSettings``; ``UserError``, raised for every mistake with the CLI's one-line message. The heavy
modules (torch, transformers) load on first use of a name, so ``python -m steer_ui`` stays quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from steer_ui.errors import UserError

__version__ = "0.1.0"

_EXPORTS = {
    "load": "steer_ui.api.model", "Model": "steer_ui.api.model", "Run": "steer_ui.api.result",
    "Row": "steer_ui.api.result", "open_run": "steer_ui.api.model", "sweep": "steer_ui.api.sweeps",
    "SweepRun": "steer_ui.api.sweeps", "load_vector": "steer_ui.vectors.files",
    "save_vector": "steer_ui.vectors.files", "SteeringVector": "steer_ui.vectors.vector",
    "RunSettings": "steer_ui.engine.run_settings",
}
__all__ = ["UserError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'steer_ui' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
