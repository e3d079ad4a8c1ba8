"""Prompts in, token ids out: plain text, chat messages through the checkpoint's template, or ids."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_triton.errors import InvalidRequestError

MAX_PROMPT_CHARS = 4 * 2**20  # far beyond any model length; refuse before tokenizing megabytes
CHAT_ROLES = {"system", "user", "assistant", "tool"}


class PromptTokenizer:
    def __init__(self, checkpoint: Path, hf_config, max_model_len: int):
        from transformers import AutoTokenizer, GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.vocab_size = hf_config.vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = self._eos_ids(checkpoint, hf_config, GenerationConfig)

    def _eos_ids(self, checkpoint, hf_config, generation_config_cls) -> set[int]:
        ids: set[int] = set()
        sources = [getattr(hf_config, "eos_token_id", None), self.tokenizer.eos_token_id]
        try:
            sources.append(generation_config_cls.from_pretrained(checkpoint).eos_token_id)
        except (OSError, ValueError):
            pass  # no generation_config.json
        for value in sources:
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def encode(
        self, prompt: str | None = None, messages: list | str | None = None, prompt_token_ids: list[int] | None = None
    ) -> list[int]:
        given = [
            name
            for name, value in (("prompt", prompt), ("messages", messages), ("prompt_token_ids", prompt_token_ids))
            if value is not None
        ]
        if len(given) != 1:
            raise InvalidRequestError(
                "prompt",
                f"give exactly one of prompt (text), messages (chat) or prompt_token_ids; got {given or 'none'}",
            )
        if prompt is not None:
            ids = self._encode_text(prompt)
        elif messages is not None:
            ids = self._encode_chat(messages)
        else:
            ids = self._check_ids(prompt_token_ids)
        if not ids:
            raise InvalidRequestError(given[0], "the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                given[0],
                f"the prompt has {len(ids)} tokens; the model length is "
                f"{self.max_model_len} (prompt + output): shorten it",
            )
        return ids

    def _encode_text(self, prompt) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidRequestError("prompt", f"expected a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError("prompt", f"{len(prompt)} characters is over the limit of {MAX_PROMPT_CHARS}")
        return self.tokenizer.encode(prompt)

    def _encode_chat(self, messages) -> list[int]:
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as e:
                raise InvalidRequestError("messages", f"not valid JSON ({e.msg} at {e.pos})") from None
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages", 'expected a non-empty list of {"role": ..., "content": ...}')
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
                raise InvalidRequestError(
                    "messages", f"item {i} must be {{\"role\": one of {sorted(CHAT_ROLES)}, \"content\": a string}}"
                )
        if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
            raise InvalidRequestError("messages", f"the contents exceed {MAX_PROMPT_CHARS} characters")
        if not self.tokenizer.chat_template:
            raise InvalidRequestError("messages", "this checkpoint has no chat template; send text_input instead")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_ids(self, ids) -> list[int]:
        ids = list(ids)
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size:
                raise InvalidRequestError("prompt_token_ids", f"{token!r} is not a token id in [0, {self.vocab_size})")
        return ids
