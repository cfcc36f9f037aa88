"""Turning one token at a time into text without re-decoding the whole row (quadratic) per step.

Decoding a token alone is wrong for byte-level pieces and for tokenizers that drop a leading space, so
each step decodes a short window of the previous tokens plus the new one and emits the difference;
an incomplete UTF-8 character is held back until the token that completes it arrives.
"""

from __future__ import annotations


class Detokenizer:
    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens already turned into emitted text

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Text that ``token_id`` adds (may be '' while a multi-byte character is incomplete)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of the row."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):]
