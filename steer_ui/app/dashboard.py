"""The dashboard: one object per tab (and panel), sharing one ``AppContext``; ``layout.build`` lays them out.

Each part owns its handlers, its components (registered by name in ``wiring.Components``) and its
events. Handlers are plain methods taking and giving values by name, so tests call them directly.
"""

from __future__ import annotations

from steer_ui.app.context import AppContext
from steer_ui.app.generate_tab import GenerateTab
from steer_ui.app.history_tab import HistoryTab
from steer_ui.app.model_panel import ModelPanel
from steer_ui.app.sweep_tab import SweepTab
from steer_ui.app.train_panel import TrainPanel
from steer_ui.app.vector_panel import VectorPanel


class Dashboard:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.vectors = VectorPanel(ctx)
        self.train = TrainPanel(ctx, self.vectors)
        self.model = ModelPanel(ctx, self.vectors)
        self.generate = GenerateTab(ctx, self.vectors, self.model, self.train)
        self.sweep = SweepTab(ctx, self.generate)
        self.history = HistoryTab(ctx, self.vectors)
