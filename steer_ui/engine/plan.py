"""Planning a run: settings checked against the model, the prompt rendered, each row's steering laid out.

Every user mistake surfaces here as a ``UserError``, before any event is yielded or any GPU booked.
A ``RunPlan`` is plain data (ids, tensors, small dataclasses): it can be pickled to a ZeroGPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from steer_ui.engine.budget import Budget, Ends, RowBudget
from steer_ui.engine.events import RowInfo
from steer_ui.engine.kv_cache import check_static_cache
from steer_ui.engine.probe import ProbeSpec, build_probe
from steer_ui.engine.run_settings import RunSettings, SteeredRow
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.model.chat import render
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.layers import format_layers


@dataclass(frozen=True)
class RunPlan:
    """A validated run: token ids, rows, steering and probe, ready to decode.

    ``directions[L]`` is a (rows x hidden) matrix: row r's direction at layer L, zero where row r does
    not steer L (the baseline everywhere). ``coefs`` and ``scopes`` are per row, baseline first.
    """

    settings: RunSettings
    prompt_ids: list[int]
    prompt_text: str
    rows: list[RowInfo]
    coefs: list[float]
    scopes: list[Scope | None]
    layers: list[int]  # every layer some row steers
    directions: dict[int, torch.Tensor]
    probe: ProbeSpec | None
    eos_ids: frozenset[int]
    starts_thinking: bool  # the rendered prompt leaves a <think> block open
    cache: str  # "dynamic" or "static"
    max_len: int  # the most positions the cache ever holds: prompt + new tokens + longest suffix + tree
    probe_width: int  # the longest suffix (0 without a probe): compiled probe steps all carry this many
    warnings: list[str] = field(default_factory=list)
    budgets: list[RowBudget | None] = field(default_factory=list)  # per row, baseline first (None: no budget)
    ends: Ends | None = None  # what ends thinking (budgets act on it; every row's urge to stop is read from it)


def render_prompt(lm: LoadedModel, settings: RunSettings) -> tuple[str, list[int], list[str]]:
    """The prompt as text and ids (``model.chat.render``): chat template unless turned off (or the model has none)."""
    return render(lm, settings.prompt, settings.system_prompt, settings.chat_template)


def eos_ids(lm: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    for source in (lm.model.generation_config.eos_token_id, lm.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def plan_run(lm: LoadedModel, settings: RunSettings) -> RunPlan:
    """Check ``settings`` against the model and tokenize; every user mistake is a UserError here."""
    settings.validate()
    # A mistake in a run whose rows share one vector and layer set is the form's; in a mixed run, name the row.
    mixed = len({(id(r.vector), r.layers) for r in settings.rows}) > 1
    row_layers = [_check_row(lm, i + 1, row, mixed) for i, row in enumerate(settings.rows)]
    warnings = _hint_warnings(lm, settings)
    text, ids, render_warnings = render_prompt(lm, settings)
    warnings += render_warnings
    probe = build_probe(lm.tokenizer, lm.profile, settings) if settings.probe_every > 0 else None
    longest_suffix = max(len(probe.suffix_ids), len(probe.close_think_ids or ())) if probe else 0
    tree = probe.tree.size if probe else 0
    if tree:
        _check_tree_support(lm)
    limit = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    budgets, ends = _budgets(lm, settings)
    if limit and len(ids) + settings.max_new_tokens + longest_suffix + tree > limit:
        raise UserError(f"prompt ({len(ids)} tokens) + max new tokens ({settings.max_new_tokens}) exceeds "
                        f"the model's context of {limit} tokens")
    if settings.cache == "static":
        check_static_cache(lm.model.config, lm.model_id)
    profile = lm.profile
    starts_thinking = bool(profile.has_thinking and text.rfind(profile.think_open) > text.rfind(profile.think_close))
    max_len = len(ids) + settings.max_new_tokens + longest_suffix + tree
    layers = sorted({x for chosen in row_layers for x in chosen})
    return RunPlan(
        settings=settings, prompt_ids=ids, prompt_text=text, rows=row_infos(settings.rows, row_layers),
        coefs=[0.0] + [r.coef for r in settings.rows],
        scopes=[None] + [r.scope if r.vector is not None else None for r in settings.rows],
        layers=layers, directions=_directions(settings.rows, row_layers, layers, lm.hidden_size), probe=probe,
        eos_ids=eos_ids(lm), starts_thinking=starts_thinking, cache=settings.cache, max_len=max_len,
        probe_width=longest_suffix, warnings=warnings, budgets=budgets, ends=ends)


def _budgets(lm: LoadedModel, settings: RunSettings) -> tuple[list[RowBudget | None], Ends]:
    """Each row's budget in token ids (baseline first), checked against the model, and what ends thinking
    (every run reads the urge to stop from it)."""
    rows, profile, tok = settings.rows, lm.profile, lm.tokenizer
    close_ids = tuple(tok.encode(profile.think_close, add_special_tokens=False)) if profile.has_thinking else ()
    ends = Ends(profile.has_thinking, close_ids[0] if close_ids else None, close_ids, eos_ids(lm))
    at_end = [r for r in rows if r.scope.kind == "at-end"]
    schedule = next((r.budget for r in rows if r.budget and r.budget.min_tokens is not None), None)
    if at_end and schedule is None:
        raise UserError("scope at-end:K refuses ends where a budget:min row would say 'Wait': add a row such "
                        "as budget:min=200 to the run")
    out: list[RowBudget | None] = [None]
    for number, row in enumerate(rows, start=1):
        if row.budget is not None and row.budget.max_tokens is not None and not profile.has_thinking:
            raise UserError(f"row {number} ({row.budget}): budget max=N closes a thinking block, and "
                            f"{lm.model_id} has none (min=N works on any model: end-of-sequence is its end)")
        if row.scope.kind == "at-end":
            if row.budget is not None:
                raise UserError(f"row {number} ({row.scope}+{row.budget}): an at-end row follows the run's "
                                "budget:min row; give it no budget of its own")
            # The vector takes the wait text's place: the row refuses ends on the budget:min row's schedule.
            out.append(RowBudget(replace(schedule, max_tokens=None), (), (), at_end=row.scope.every))
        elif row.budget is not None:
            out.append(_row_budget(lm, row.budget, close_ids))
        else:
            out.append(None)
    return out, ends


def _row_budget(lm: LoadedModel, budget: Budget, close_ids: tuple[int, ...]) -> RowBudget:
    tok = lm.tokenizer
    wait = tuple(tok.encode(budget.wait, add_special_tokens=False)) if budget.min_tokens is not None else ()
    cap, cap_text = (), ""
    if budget.max_tokens is not None:
        cue = budget.cue if budget.cue is not None else lm.profile.answer_cue
        cap, cap_text = close_ids + tuple(tok.encode(cue, add_special_tokens=False)), lm.profile.think_close + cue
    return RowBudget(budget, wait, cap, cap_text=cap_text)


def _check_tree_support(lm: LoadedModel) -> None:
    """Multi-token choices are read with a custom attention mask: full attention, sdpa or eager kernels."""
    config = lm.model.config.get_text_config()
    if lm.model.config._attn_implementation not in ("sdpa", "eager"):
        raise UserError(f"multi-token probe choices need sdpa or eager attention; {lm.model_id} runs "
                        f"{lm.model.config._attn_implementation}: use one-token choices such as Yes,No")
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        raise UserError(f"multi-token probe choices need full attention in every layer; {lm.model_id} has "
                        "sliding-window layers: use one-token choices such as Yes,No")


def _check_row(lm: LoadedModel, number: int, row: SteeredRow, name_it: bool) -> list[int]:
    """The layers row ``number`` steers, after checking its vector and scope against the model."""
    if row.vector is None:
        return []
    if row.scope.needs_thinking and not lm.profile.has_thinking:
        raise UserError(f"scope '{row.scope}' needs a model with a thinking block; "
                        f"{lm.model_id} has none (use all, generated or kick:N)")
    try:
        return row.vector.check_against(lm.n_layers, lm.hidden_size, row.layers)
    except UserError as err:
        if not name_it:
            raise
        raise UserError(f"row {number} ({vector_label(row.vector)} {row.coef:+g}): {err}") from None


def _hint_warnings(lm: LoadedModel, settings: RunSettings) -> list[str]:
    model_type = lm.model.config.model_type
    return [f"vector {vector_label(v)} was made for a '{v.model_hint}' model, this is '{model_type}'"
            for v in settings.vectors if v.model_hint and v.model_hint.lower() != model_type.lower()]


def vector_label(vector) -> str:
    """A vector's name as a row label shows it: the file's stem ('confidence', not 'confidence.safetensors')."""
    name = vector.name or "vector"
    return Path(name).stem if Path(name).suffix in (".safetensors", ".gguf", ".pt", ".pth", ".npy", ".npz") else name


def row_infos(rows: tuple[SteeredRow, ...], row_layers: list[list[int]]) -> list[RowInfo]:
    """Baseline first. A label says what tells a row apart: the coefficient, and the vector, layers or
    scope when the run's rows differ in them ('coef +4' in a one-vector run, 'confidence -6' in a mixed one)."""
    steering = [(r, x) for r, x in zip(rows, row_layers) if r.vector is not None]
    differ_vector = len({id(r.vector) for r, _ in steering}) > 1 or len(steering) < len(rows)
    differ_layers = len({tuple(x) for _, x in steering}) > 1
    differ_scope = len({str(r.scope) for r, _ in steering}) > 1
    infos = [RowInfo(0, "baseline", 0.0)]
    for i, (row, layers) in enumerate(zip(rows, row_layers)):
        budget = str(row.budget) if row.budget is not None else None
        if row.vector is None:
            infos.append(RowInfo(i + 1, budget, 0.0, budget=budget))
            continue
        label = f"{vector_label(row.vector)} {row.coef:+g}" if differ_vector else f"coef {row.coef:+g}"
        if differ_layers:
            label += f" @{format_layers(layers)}"
        if differ_scope or row.scope.kind == "at-end":
            label += f" ({row.scope})"
        if budget:
            label += f" +{budget}"
        infos.append(RowInfo(i + 1, label, float(row.coef), row.vector.name, list(layers), str(row.scope), budget))
    return infos


def _directions(rows: tuple[SteeredRow, ...], row_layers: list[list[int]], layers: list[int],
                hidden: int) -> dict[int, torch.Tensor]:
    out = {}
    for layer in layers:
        matrix = torch.zeros(len(rows) + 1, hidden)  # row 0, the baseline, stays zero
        for i, (row, chosen) in enumerate(zip(rows, row_layers)):
            if layer in chosen and row.vector is not None:
                matrix[i + 1] = row.vector.directions[layer]
        out[layer] = matrix
    return out
