"""Incremental detokenization: new text per step, never half a UTF-8 character, never a stop string.

Decoding one token at a time breaks multi-byte characters (a Chinese character can span several
byte-level tokens) and word-boundary spaces. So each step decodes a short window of recent tokens twice
(without and with the new ones) and emits the difference, but only once it no longer ends in U+FFFD,
the tokenizer's mark for incomplete bytes. Text that could still turn into a stop string is held back
until it cannot; when a stop string appears, the text is cut right before it (stop_strings.py finds
both in time linear in the text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwen_triton.tokenizer.stop_strings import StopStringMatcher

REPLACEMENT = "\ufffd"


@dataclass
class IncrementalDetokenizer:
    tokenizer: object
    stop: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # all text decoded so far (stop string not included once found)
    emitted: int = 0  # characters of `text` already handed out
    prefix_offset: int = 0  # window start for decoding context
    read_offset: int = 0  # tokens whose text is already in `text`
    stopped: bool = False
    _matcher: StopStringMatcher = field(init=False, repr=False)

    def __post_init__(self):
        self._matcher = StopStringMatcher(self.stop)

    def add(self, new_token_ids: list[int]) -> None:
        """Append tokens and extend `text`; sets `stopped` when a stop string shows up."""
        if self.stopped:
            return  # the text ended at the stop string; later tokens add nothing
        self.token_ids.extend(new_token_ids)
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        if full.endswith(REPLACEMENT) or len(full) <= len(prefix):
            return  # incomplete character: wait for the next token
        new_text = full[len(prefix) :]
        self.text += new_text
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        stop_at = self._matcher.feed(new_text)
        if stop_at is not None:
            self.text = self.text[:stop_at]
            self.stopped = True

    def take(self, final: bool) -> str:
        """Text that is safe to hand out now (everything, when the sequence is finished)."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._matcher.held_back()
        chunk = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return chunk

    def _decode(self, ids: list[int]) -> str:
        # The Rust tokenizer directly: the Python wrapper costs ten times the decode itself, and this
        # runs twice per token of every running sequence.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
