"""Work started by a request runs on a thread that carries the request's context.

On ZeroGPU the GPU is booked against the visitor who asked, and ``spaces`` finds that visitor in a
context variable set for the request; a plain ``threading.Thread`` starts with an empty context, so a
vector computed or a training run on one was booked with no visitor at all.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable


def start_in_request_context(work: Callable[[], None], name: str) -> threading.Thread:
    """Start ``work`` on a daemon thread in a copy of the caller's context and return the thread."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), name=name, daemon=True)
    thread.start()
    return thread
