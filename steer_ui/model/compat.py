"""Where the transformers (and kernels) releases the declared range allows differ, and how steer-ui meets them.

The lock pins one release; library users install any in ``requirements.txt``'s range, so each difference
is met here, once, by looking at the installed code rather than at version numbers.
"""

from __future__ import annotations

import inspect
import types

import torch


def cache_arg(model: torch.nn.Module) -> str:
    """The name ``forward`` takes the KV cache under: transformers 5.25 renamed ``past_key_values`` to
    ``cache`` (the old name warns on every call and goes in 5.40); 5.23 and remote code keep the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# transformers 5.25 kernelizes every model it loads (``use_kernels`` defaults to on): layers whose hub
# kernels fit the device get code fetched from the Hugging Face hub at load time. steer-ui runs the torch
# implementation instead: loads stay offline and reproducible, a hosted server runs no downloaded code,
# and the exactness tests (baseline == generate, probe == uncached forward) hold as written. 5.23 takes
# the same keyword (off by default there).
LOAD_KWARGS = {"use_kernels": False}


def drop_kernel_routing(model: torch.nn.Module) -> int:
    """Give modules wrapped by ``kernels.use_kernelized_func`` their own forward back; return how many.

    transformers 5.25 wraps some modules (Llama's attention, for one) in ``kernels``' routing, which
    reads, sets and resets a process-wide ``_ACTIVE_KERNEL_FUNCS`` on every call, switching it to a
    plain global whenever ``torch.compiler.is_compiling()``. In torch 2.13 that flag is process-wide for
    a whole compile, so an eager run on one thread while the fast path compiled on another wrote the
    global, and dynamo then failed building its guards on it ("Error while creating guard:
    ..._ACTIVE_KERNEL_FUNCS.global_var"): every background warm-up failed and runs silently stayed
    eager. The routing picks a kernelized function only after ``kernelize``, which ``LOAD_KWARGS`` turns
    off, so the unwrapped forward computes exactly what the wrapped one does and nothing shared is
    written any more. Without ``kernels`` installed there is no wrapper and nothing to do.
    """
    dropped = 0
    for module in model.modules():
        if "_kernel_funcs" not in module.__dict__:  # the wrapper's __init__ sets it on each instance
            continue
        own = getattr(type(module).forward, "__wrapped__", None)  # functools.wraps keeps the original
        if own is not None:
            module.forward = types.MethodType(own, module)
            dropped += 1
    return dropped
