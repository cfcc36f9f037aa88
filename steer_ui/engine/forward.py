"""One model call on a run's KV cache, with that call's steering scale, and the probe's suffix cut off after.

The decode loop makes every model call through a ``Forward``; so does the benchmark's probe-cost case.
On the fast path (``fast_path.FastSession``) the call goes to the compiled steps on the fast path's
thread, with the rows padded to the session's bucket (the padding rows feed a pad token, get no
steering, and are dropped from the logits).

A call may lay its new tokens out as a tree instead of a sequence (``parents``): each token follows
the cache and its own ancestors only, at the position its depth gives it. That is how the probe reads
multi-token answers as branches after the suffix in the decode step's forward (see ``engine.probe``).
"""

from __future__ import annotations

import numpy as np
import torch

from steer_ui.engine.kv_cache import crop as crop_cache
from steer_ui.engine.kv_cache import new_cache
from steer_ui.errors import UserError
from steer_ui.model.loading import LoadedModel


class Forward:
    """Calls the model on the shared cache; ``mask`` (rows x positions) times each row's coefficient is
    the steering scale of this call."""

    def __init__(self, lm: LoadedModel, steerer, coefs: torch.Tensor, cache: str = "dynamic", max_len: int = 0,
                 session=None, pad: int = 0):
        self.lm, self.steerer, self.coefs = lm, steerer, coefs
        self.session, self.pad = session, pad
        self.cache = session.cache if session is not None else new_cache(lm.model.config, cache, max_len)
        self.device = lm.input_device

    @torch.inference_mode()  # here, not around the loop: the loop yields, and grad mode is thread state
    def __call__(self, ids: list[list[int]], mask: list[list[float]], keep: list[list[int]] | int,
                 crop: int, parents: list[list[int]] | None = None) -> torch.Tensor:
        """Logits at ``keep`` (per row: positions; or the last ``keep`` positions); then forget ``crop``
        positions of the cache. ``parents[r][i]``: the new token that token i of row r follows (-1: the
        cache); without it, each follows the one before."""
        rows = len(ids)
        if self.session is not None:
            ids, mask, keep = self._padded(ids, mask, keep)
        if self.steerer is not None:
            coefs = self.coefs if self.session is None else _pad_to(self.coefs, len(ids))
            any_steered = self.session is not None or any(any(m) for m in mask)
            self.steerer.scale = ((coefs[:, None] * torch.tensor(mask, device=self.device)).to(self.lm.dtype)
                                  if any_steered else None)
        inputs = {"input_ids": torch.tensor(ids, device=self.device), self.lm.cache_arg: self.cache,
                  "use_cache": True, "logits_to_keep": keep if isinstance(keep, int) else
                  torch.tensor(keep, device=self.device)}
        if parents is not None:
            parents = parents + [parents[0]] * (len(ids) - len(parents))  # the session's padding rows
            inputs.update(tree_inputs(self.lm, self.cache, parents))
        if self.session is not None:
            out = self._compiled(inputs)
        else:
            try:
                out = self.lm.model(**inputs)
            finally:
                if self.steerer is not None:
                    self.steerer.scale = None
        if crop:
            crop_cache(self.cache, crop)
        return out.logits[:rows]

    def _compiled(self, inputs: dict):
        try:
            return self.session(**inputs)
        except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as err:
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # dynamo wraps the real error
            first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
            raise UserError(f"torch.compile failed ({type(cause).__name__}: {first}); run with --eager") from None

    def _padded(self, ids: list[list[int]], mask: list[list[float]], keep: list[list[int]] | int):
        """Rows up to the session's bucket: a pad token, no steering, the same positions kept."""
        extra = self.session.shape.rows - len(ids)
        width = len(ids[0])
        ids = ids + [[self.pad] * width] * extra
        mask = mask + [[0.0] * width] * extra
        if not isinstance(keep, int):
            keep = keep + [keep[0]] * extra
        return ids, mask, keep


def _pad_to(coefs: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([coefs, coefs.new_zeros(rows - coefs.shape[0])]) if rows > coefs.shape[0] else coefs


def tree_inputs(lm: LoadedModel, cache, parents: list[list[int]]) -> dict[str, torch.Tensor]:
    """The attention mask (rows x 1 x new x cache length) and position ids of a tree of new tokens on
    ``cache``: each token sees the whole past, its ancestors and itself, at the past's length + its depth."""
    q = len(parents[0])
    past = int(cache.get_seq_length())
    kv_length, _ = cache.get_mask_sizes(q, 0)
    built = {layout: _tree_layout(layout, past, kv_length) for layout in {tuple(p) for p in parents}}
    # A prefill lays every row out alike: one mask, broadcast over the rows.
    keys = [tuple(p) for p in parents] if len(built) > 1 else [tuple(parents[0])]
    mask = torch.from_numpy(np.stack([built[k][0] for k in keys]))[:, None].to(lm.input_device)
    if lm.model.config._attn_implementation == "eager":  # eager attention adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=lm.dtype, device=lm.input_device).masked_fill_(
            ~mask, torch.finfo(lm.dtype).min)
    depth = np.stack([built[tuple(p)][1] for p in parents])
    return {"attention_mask": mask, "position_ids": torch.from_numpy(depth + past).to(lm.input_device)}


def _tree_layout(parents: tuple[int, ...], past: int, kv_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Which cache positions each new token sees (the whole past, its ancestors, itself), and its depth."""
    q = len(parents)
    attend = np.zeros((q, kv_length), dtype=bool)
    attend[:, :past] = True
    depth = np.zeros(q, dtype=np.int64)
    for i, parent in enumerate(parents):
        if parent >= 0:
            attend[i, past:past + i] = attend[parent, past:past + i]
            depth[i] = depth[parent] + 1
        attend[i, past + i] = True
    return attend, depth
