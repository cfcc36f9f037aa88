"""A prompt as the model reads it: through its chat template (when it has one and it is wanted), as text
and token ids. One renderer for runs (``engine.plan``) and for training (``vectors.training``), so a
vector trained on a prompt sees exactly the tokens a run of that prompt feeds."""

from __future__ import annotations

from steer_ui.model.loading import LoadedModel


def render(lm: LoadedModel, prompt: str, system_prompt: str | None = None,
           chat_template: bool = True) -> tuple[str, list[int], list[str]]:
    """(text, ids, warnings): the chat template unless turned off (or the model has none)."""
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, tok.encode(text, add_special_tokens=False), []
    warnings = [f"{lm.model_id} has no chat template: the prompt is sent as raw text"] if chat_template else []
    return prompt, tok.encode(prompt), warnings
