"""What we know about the models people steer: layer counts, a layer band to start from, thinking tags.

The band is a starting point taken from published steering work (see docs/models.md), not a guarantee:
the vectors issue adds per-layer separation scores to choose layers from data.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SUFFIX = " So the final answer is"


@dataclass(frozen=True)
class ModelProfile:
    """Facts about one model family that the engine and UI use as defaults."""

    key: str
    n_layers: int
    hidden_size: int
    layer_band: tuple[int, int]  # inclusive, 0-based block indices
    think_open: str | None = None
    think_close: str | None = None
    probe_suffix: str = DEFAULT_SUFFIX
    note: str = ""
    # What a budget:max row forces after the closing tag (s1 forces "Final Answer:"; R1 and Qwen3 write
    # their answers after a blank line, in bold for R1).
    answer_cue: str = "\n\nFinal Answer:"

    @property
    def has_thinking(self) -> bool:
        return self.think_open is not None and self.think_close is not None


BUNDLED_ALIAS = "smollm2-135m"

# Hub ids in lower case. Bands: R1-Llama-8B 12-15 ('reconsideration' experiment), R1-Qwen-1.5B 15-18
# (Venhoff et al. 2025); the others are the middle of the stack, where steering usually works best.
KNOWN_MODELS: dict[str, ModelProfile] = {
    p.key: p
    for p in [
        ModelProfile(
            BUNDLED_ALIAS, 30, 576, (10, 19),
            note="SmolLM2-135M-Instruct (bundled, Q4_1 GGUF); not a reasoning model, no thinking block",
        ),
        ModelProfile(
            "huggingfacetb/smollm2-135m-instruct", 30, 576, (10, 19),
            note="SmolLM2-135M-Instruct; not a reasoning model, no thinking block",
        ),
        ModelProfile(
            "deepseek-ai/deepseek-r1-distill-qwen-1.5b", 28, 1536, (15, 18), "<think>", "</think>",
            note="template opens <think>; layers 15-18 from Venhoff et al. 2025",
        ),
        ModelProfile(
            "deepseek-ai/deepseek-r1-distill-qwen-7b", 28, 3584, (12, 18), "<think>", "</think>",
            note="template opens <think>",
        ),
        ModelProfile(
            "deepseek-ai/deepseek-r1-distill-llama-8b", 32, 4096, (12, 15), "<think>", "</think>",
            note="template opens <think>; layers 12-15 from the 'reconsideration' MATH500 experiment",
        ),
        ModelProfile("qwen/qwen3-0.6b", 28, 1024, (10, 18), "<think>", "</think>", note="thinks by default"),
        ModelProfile("qwen/qwen3-1.7b", 28, 2048, (10, 18), "<think>", "</think>", note="thinks by default"),
        ModelProfile("qwen/qwen3-4b", 36, 2560, (12, 24), "<think>", "</think>", note="thinks by default"),
        ModelProfile("qwen/qwen3-8b", 36, 4096, (12, 24), "<think>", "</think>", note="thinks by default"),
    ]
}


def profile_for(model_id: str, n_layers: int, hidden_size: int, vocab: set[str] | None = None) -> ModelProfile:
    """The table's entry for ``model_id`` if its shape matches, else a generic profile for this shape.

    A model outside the table still gets thinking tags when its vocabulary has ``<think>``/``</think>``
    as tokens, which covers fine-tunes of R1 and Qwen3 under other names.
    """
    known = KNOWN_MODELS.get(model_id.strip().lower().rstrip("/"))
    if known is not None and (known.n_layers, known.hidden_size) == (n_layers, hidden_size):
        return known
    thinks = vocab is not None and "<think>" in vocab and "</think>" in vocab
    third = max(1, n_layers // 3)
    return ModelProfile(
        key=model_id,
        n_layers=n_layers,
        hidden_size=hidden_size,
        layer_band=(third, min(n_layers - 1, 2 * third - 1)),
        think_open="<think>" if thinks else None,
        think_close="</think>" if thinks else None,
        note="not in the table of known models: generic defaults",
    )
