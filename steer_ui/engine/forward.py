"""One model call on a run's KV cache, with that call's steering scale, and the probe's suffix cut off after.

The decode loop makes every model call through a ``Forward``; so does the benchmark's probe-cost case.
"""

from __future__ import annotations

import torch

from steer_ui.engine.hooks import Steerer
from steer_ui.engine.kv_cache import crop as crop_cache
from steer_ui.engine.kv_cache import new_cache
from steer_ui.errors import UserError
from steer_ui.model.loading import LoadedModel


class Forward:
    """Calls the model on the shared cache; ``mask`` (rows x positions) times each row's coefficient is
    the steering scale of this call."""

    def __init__(self, lm: LoadedModel, steerer: Steerer | None, coefs: torch.Tensor, cache: str = "dynamic",
                 max_len: int = 0):
        self.lm, self.steerer, self.coefs = lm, steerer, coefs
        self.cache = new_cache(lm.model.config, cache, max_len)
        self.device = lm.input_device
        self.stepping = False

    @torch.inference_mode()  # here, not around the loop: the loop yields, and grad mode is thread state
    def __call__(self, ids: list[list[int]], mask: list[list[float]], keep: list[list[int]] | int,
                 crop: int) -> torch.Tensor:
        """Logits at ``keep`` (per row: positions; or the last ``keep`` positions); then forget ``crop``
        positions of the cache."""
        if self.steerer is not None:
            any_steered = any(any(m) for m in mask)
            self.steerer.scale = ((self.coefs[:, None] * torch.tensor(mask, device=self.device)).to(self.lm.dtype)
                                  if any_steered else None)
        keep_arg = keep if isinstance(keep, int) else torch.tensor(keep, device=self.device)
        compiled = self.lm.step_forward is not None and self.stepping
        self.stepping = True  # every call after the prefill is a decode step
        out = (self._compiled_step if compiled else self.lm.model)(
            input_ids=torch.tensor(ids, device=self.device), past_key_values=self.cache, use_cache=True,
            logits_to_keep=keep_arg)
        if self.steerer is not None:
            self.steerer.scale = None
        if crop:
            crop_cache(self.cache, crop)
        return out.logits

    def _compiled_step(self, **inputs):
        try:
            return self.lm.step_forward(**inputs)
        except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as err:
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # dynamo wraps the real error
            first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
            raise UserError(f"torch.compile failed ({type(cause).__name__}: {first}); run without --compile") from None
