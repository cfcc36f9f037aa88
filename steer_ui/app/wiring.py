"""Wiring events by name: components are registered under a name, handlers take and give values by name.

Gradio passes a handler's inputs by parameter name (``inputs_kwargs``), so a handler's signature is its
input list. Outputs go the other way: a handler returns (or yields) ``{name: value}``, and
``by_name`` turns that into Gradio's tuple in the event's output order, leaving out names it was not
given (``gr.skip()``: the component keeps its value). No list is counted by hand anywhere.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import gradio as gr


class Components:
    """The dashboard's components by name."""

    def __init__(self) -> None:
        self._by_name: dict[str, gr.components.Component] = {}

    def add(self, name: str, component: Any) -> Any:
        if name in self._by_name:
            raise ValueError(f"two components named {name!r}")
        self._by_name[name] = component
        return component

    def __getitem__(self, name: str) -> Any:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def inputs(self, names: Iterable[str]) -> dict[str, Any]:
        """``inputs_kwargs`` for an event: each name is the handler's parameter of that name."""
        return {name: self._by_name[name] for name in names}

    def outputs(self, names: Iterable[str]) -> list[Any]:
        return [self._by_name[name] for name in names]


def by_name(handler: Callable, names: Sequence[str]) -> Callable:
    """``handler`` returning or yielding ``{name: value}``, as Gradio wants it for outputs ``names``."""
    def ordered(values: Mapping[str, Any]) -> Any:
        unknown = set(values) - set(names)
        if unknown:
            raise KeyError(f"{handler.__name__} gave outputs it is not wired to: {sorted(unknown)}")
        out = tuple(values[n] if n in values else gr.skip() for n in names)
        return out[0] if len(out) == 1 else out  # one output: Gradio wants the value itself

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            for values in handler(*args, **kwargs):
                yield ordered(values)
        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        return ordered(handler(*args, **kwargs))
    return call
