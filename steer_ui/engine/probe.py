"""The suffix probe: which token sequences stand for each answer, and reading them off the logits.

A choice is read over its *forms*, each as the tokens the tokenizer makes of it. A choice whose spaced
form is one token (' Yes', ' Paris': what a model writes after "... the final answer is") is read as it
always was, over its one-token forms (' Yes', 'Yes', ' yes', 'yes', ... whichever are one token), so
yes/no readings did not move. Any other choice is read over the label as written, with and without a
leading space, at any length ('391' is '3' '9' '1' and ' 391' is ' ' '3' '9' '1' in SmolLM2; '7' is one
token but ' 7' is ' ' '7', the form that counts), plus its one-token case forms for a word. A form's
log-probability is the sum of its tokens' log-probabilities, teacher-forced; a choice's is the
log-sum-exp over its forms.

The tokens after a form's first are fed after the suffix as a trie (``Tree``): forms that share a first
token share that node, and each node attends to the cache, the suffix and its own ancestors only, so the
decode loop reads every choice in the same forward as the decode step (see ``decode``).

Running the suffix on the live cache is the decode loop's job; this module only knows tokens and
arithmetic, so it can be checked against a plain full forward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from steer_ui.engine.run_settings import MAX_CHOICE_TOKENS, MAX_PROBE_NODES, RunSettings, probe_labels
from steer_ui.errors import UserError
from steer_ui.model.known import ModelProfile

SUFFIX_END = -1  # a read's source: the suffix's last position (the first token of every form)


@dataclass(frozen=True)
class Choice:
    label: str
    variants: tuple[tuple[int, ...], ...]  # the token ids of each form read, sorted

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The one-token forms' ids (the whole reading for a choice like 'Yes')."""
        return tuple(v[0] for v in self.variants if len(v) == 1)


@dataclass(frozen=True)
class Tree:
    """Every form's tokens after its first, as a trie fed after the suffix.

    Node i feeds ``tokens[i]`` after node ``parents[i]`` (``SUFFIX_END``: right after the suffix).
    ``reads[t]`` = (source, token, form): the log-probability of ``token`` at ``source`` (a node, or the
    suffix's end) is one term of ``form``'s sum; forms are numbered choice by choice, in order.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    reads: tuple[tuple[int, int, int], ...]
    form_choice: tuple[int, ...]  # form -> its choice

    @property
    def size(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class ProbeSpec:
    suffix_ids: tuple[int, ...]
    close_think_ids: tuple[int, ...] | None  # closing tag + suffix, for rows still inside <think>
    choices: tuple[Choice, ...]
    every: int
    min_mass: float
    tree: Tree
    gold: bool = False  # choice 0 is the gold answer: log-odds are P(gold) against everything else


@dataclass(frozen=True)
class Reading:
    logodds: float
    mass: float
    logprobs: dict[str, float]
    reliable: bool


def _forms(label: str) -> tuple[list[str], list[str]]:
    """The label as written (with and without a leading space), and its other case forms for a word."""
    exact = [label, " " + label]
    word = label.replace(" ", "").isalpha()
    cases = {label.lower(), label.upper(), label.capitalize(), label.title()} - {label} if word else set()
    return exact, sorted(cases | {" " + c for c in cases})


def _tokenized(tokenizer, form: str) -> tuple[int, ...] | None:
    """The tokens of ``form``, when they decode back to it (byte fallbacks and normalisers may not)."""
    enc = tokenizer.encode(form, add_special_tokens=False)
    if not enc or tokenizer.decode(enc).strip() != form.strip():
        return None
    return tuple(int(i) for i in enc)


def choice_of(tokenizer, label: str, what: str = "probe choice") -> Choice:
    label = label.strip()
    if not label:
        raise UserError(f"a {what} is empty")
    exact, cases = _forms(label)
    tokenized = {f: _tokenized(tokenizer, f) for f in exact + cases}
    spaced = tokenized[" " + label]
    one_token = spaced is not None and len(spaced) == 1
    forms = {ids for f, ids in tokenized.items() if ids and (len(ids) == 1 or (f in exact and not one_token))}
    if not forms:
        raise UserError(f"the {what} {label!r} has no tokens that decode back to it in this model's vocabulary")
    longest = max(len(ids) for ids in forms)
    if longest > MAX_CHOICE_TOKENS:
        raise UserError(f"the {what} {label!r} is {longest} tokens long in this model; the probe reads answers of "
                        f"at most {MAX_CHOICE_TOKENS} tokens")
    return Choice(label, tuple(sorted(forms)))


def build_choices(tokenizer, labels: tuple[str, ...], gold: bool = False) -> tuple[Choice, ...]:
    """Each label's forms as token ids; one UserError for a label without any, or two labels reading the
    same tokens."""
    choices = [choice_of(tokenizer, label, "gold answer" if gold and i == 0 else "probe choice")
               for i, label in enumerate(labels)]
    seen: dict[tuple[int, ...], str] = {}
    for c in choices:
        for ids in c.variants:
            if ids in seen:
                raise UserError(f"probe choices {seen[ids]!r} and {c.label!r} read the same tokens {list(ids)}")
            seen[ids] = c.label
    return tuple(choices)


def build_tree(choices: tuple[Choice, ...]) -> Tree:
    """The trie of every form's tokens but its last (the last is only read, never fed)."""
    tokens: list[int] = []
    parents: list[int] = []
    node_of: dict[tuple[int, ...], int] = {}
    reads: list[tuple[int, int, int]] = []
    form_choice: list[int] = []
    for ci, choice in enumerate(choices):
        for ids in choice.variants:
            form = len(form_choice)
            form_choice.append(ci)
            source = SUFFIX_END
            for k, tok in enumerate(ids):
                reads.append((source, tok, form))
                if k == len(ids) - 1:
                    break
                prefix = ids[:k + 1]
                if prefix not in node_of:
                    node_of[prefix] = len(tokens)
                    tokens.append(tok)
                    parents.append(source)
                source = node_of[prefix]
    if len(tokens) > MAX_PROBE_NODES:
        raise UserError(f"the probe choices take {len(tokens)} extra positions at every reading; at most "
                        f"{MAX_PROBE_NODES} are allowed: use fewer or shorter choices")
    return Tree(tuple(tokens), tuple(parents), tuple(reads), tuple(form_choice))


def tree_parents(chain: int, tree: Tree, width: int) -> list[int]:
    """A forward's layout as parent links (``Forward``'s ``parents``): a sequence of ``chain`` tokens (the
    prompt or the decode token, then the suffix), the tree's nodes below its last, then padding (each
    token on its own)."""
    parents = [i - 1 for i in range(chain)]
    parents += [chain - 1 if p == SUFFIX_END else chain + p for p in tree.parents]
    return parents + [-1] * (width - len(parents))


def build_probe(tokenizer, profile: ModelProfile, settings: RunSettings) -> ProbeSpec:
    suffix = profile.probe_suffix if settings.probe_suffix is None else settings.probe_suffix
    suffix_ids = tuple(tokenizer.encode(suffix, add_special_tokens=False))
    close_ids = None
    if profile.has_thinking:
        # The model would keep thinking after a bare suffix: close the block the way the model itself does.
        text = f"\n{profile.think_close}\n\n{suffix.lstrip()}"
        close_ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    gold = settings.probe_gold is not None
    choices = build_choices(tokenizer, probe_labels(settings), gold)
    return ProbeSpec(suffix_ids, close_ids, choices, settings.probe_every, settings.probe_min_mass,
                     build_tree(choices), gold)


def read(logits: torch.Tensor, spec: ProbeSpec) -> list[Reading]:
    """Readings for each row of ``logits``: rows x (1 + tree nodes) x vocab, the suffix's last position
    and then each node's (rows x vocab when the tree is empty)."""
    if logits.dim() == 2:
        logits = logits[:, None]
    logp = torch.log_softmax(logits.float(), dim=-1)
    source, token, form, owned = _indices(spec.tree, len(spec.choices), logp.device)
    terms = logp[:, source, token]  # rows x reads
    per_form = terms.new_zeros(logp.shape[0], len(spec.tree.form_choice)).index_add_(1, form, terms)
    per_choice = torch.stack([per_form.index_select(1, forms).logsumexp(dim=-1) for forms in owned])
    mass = per_choice.logsumexp(dim=0).exp()
    # One host transfer for all rows and choices.
    values, masses = per_choice.T.tolist(), mass.tolist()
    return [Reading(logodds=_logodds(row_vals, spec.gold), mass=m,
                    logprobs={c.label: v for c, v in zip(spec.choices, row_vals)},
                    reliable=spec.gold or m >= spec.min_mass)
            for row_vals, m in zip(values, masses)]


@functools.lru_cache(maxsize=64)
def _indices(tree: Tree, n_choices: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The reads' positions, tokens and forms, and each choice's forms, as index tensors on ``device``:
    made once per probe, not at every reading (on a GPU each would be a copy from the host)."""
    source = torch.tensor([s + 1 for s, _, _ in tree.reads], device=device)
    token = torch.tensor([t for _, t, _ in tree.reads], device=device)
    form = torch.tensor([f for _, _, f in tree.reads], device=device)
    owned = tuple(torch.tensor([f for f, c in enumerate(tree.form_choice) if c == ci], device=device)
                  for ci in range(n_choices))
    return source, token, form, owned


def _logodds(values: list[float], gold: bool) -> float:
    """First choice against the second; with a gold answer, P(gold) against 1 - P(gold) (every other
    answer the model could give, its own best candidate among them)."""
    if not gold:
        return values[0] - values[1]
    lp = min(values[0], -1e-12)  # P(gold) = 1 in floating point would make the odds infinite
    return lp - math.log(-math.expm1(lp))
