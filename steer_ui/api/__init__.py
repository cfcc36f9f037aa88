"""steer-ui from Python: load a model, steer, probe, plot and log in a few lines (see ``steer_ui``)."""

from steer_ui.api.model import Model, load, open_run
from steer_ui.api.result import Row, Run
from steer_ui.api.sweeps import SweepRun, sweep

__all__ = ["Model", "Row", "Run", "SweepRun", "load", "open_run", "sweep"]
