"""Prompts in, token ids out: plain text, chat messages through the checkpoint's template, or ids."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_triton.errors import InvalidRequestError

MAX_PROMPT_CHARS = 4 * 2**20  # far beyond any model length; refuse before tokenizing megabytes
CHAT_ROLES = {"system", "user", "assistant", "tool"}
# Chat messages and tool schemas are JSON a client controls: deeper nesting than any real tool schema
# is refused before json or the template engine recurse on it.
MAX_JSON_DEPTH = 32
# generation_config.json keys that become a request's sampling defaults (SamplingParams names).
GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


class PromptTokenizer:
    def __init__(self, checkpoint: Path, hf_config, max_model_len: int):
        from transformers import AutoTokenizer, GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.vocab_size = hf_config.vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = self._eos_ids(checkpoint, hf_config, GenerationConfig)
        self.sampling_defaults = _generation_defaults(checkpoint, GenerationConfig)

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
        self,
        prompt: str | None = None,
        messages: list | str | None = None,
        prompt_token_ids: list[int] | None = None,
        tools: list | str | None = None,
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
            ids = self._encode_chat(messages, tools)
        else:
            ids = self._check_ids(prompt_token_ids)
        if tools is not None and messages is None:
            raise InvalidRequestError("tools", "tools are rendered by the chat template: send messages with them")
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

    def _encode_chat(self, messages, tools=None) -> list[int]:
        messages = parse_json_field("messages", messages)
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages", 'expected a non-empty list of {"role": ..., "content": ...}')
        for i, m in enumerate(messages):
            _check_message(i, m)
        if sum(len(m.get("content") or "") for m in messages) > MAX_PROMPT_CHARS:
            raise InvalidRequestError("messages", f"the contents exceed {MAX_PROMPT_CHARS} characters")
        if tools is not None:
            tools = _check_tools(parse_json_field("tools", tools))
        if not self.tokenizer.chat_template:
            raise InvalidRequestError("messages", "this checkpoint has no chat template; send text_input instead")
        text = self._render_chat(messages, tools)
        if tools and text == self._render_chat(messages, None):
            raise InvalidRequestError(
                "tools", "this checkpoint's chat template does not render tools; describe them in a message instead"
            )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _render_chat(self, messages: list, tools: list | None) -> str:
        """The checkpoint's template applied; a template that fails on these messages (one that cannot
        render a null content, say) is the client's to fix, not an internal error."""
        try:
            return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja2 raises TemplateError, TypeError, ... from inside the template
            raise InvalidRequestError(
                "messages", f"the checkpoint's chat template cannot render these messages: {error}"
            ) from None

    def bad_word_token_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word as the token sequences it can appear as: alone and after a space (BPE merges the
        space into the word's first token), so neither spelling can be produced."""
        sequences: list[list[int]] = []
        for word in words:
            for spelling in (word, " " + word):
                ids = self.tokenizer.encode(spelling, add_special_tokens=False)
                if ids and ids not in sequences:
                    sequences.append(ids)
        return sequences

    def _check_ids(self, ids) -> list[int]:
        ids = list(ids)
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size:
                raise InvalidRequestError("prompt_token_ids", f"{token!r} is not a token id in [0, {self.vocab_size})")
        return ids


def parse_json_field(name: str, value):
    """A JSON string (or an already-parsed value) as Python, nesting depth bounded by MAX_JSON_DEPTH."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(name, f"not valid JSON ({e.msg} at {e.pos})") from None
        except RecursionError:
            raise InvalidRequestError(name, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequestError(name, f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile value may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_message(i: int, m) -> None:
    """A chat turn: a role and string content; an assistant turn may carry tool_calls with null content."""
    shape = f'item {i} must be {{"role": one of {sorted(CHAT_ROLES)}, "content": a string}}'
    if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
        raise InvalidRequestError("messages", shape)
    calls = m.get("tool_calls")
    if calls is not None:
        if m["role"] != "assistant" or not isinstance(calls, list):
            raise InvalidRequestError("messages", f"item {i}: tool_calls is a list, on assistant turns only")
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequestError(
                    "messages", f'item {i}: each tool call is {{"function": {{"name": ..., "arguments": ...}}}}'
                )
    content = m.get("content")
    if not isinstance(content, str) and not (content is None and calls):
        raise InvalidRequestError("messages", shape + " (null only on an assistant turn with tool_calls)")


def _check_tools(tools) -> list:
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidRequestError("tools", 'expected a JSON list of {"type": "function", "function": {...}}')
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError("tools", f'item {i} must be {{"type": "function", "function": {{"name": ...}}}}')
    return tools


def _generation_defaults(checkpoint, generation_config_cls) -> dict:
    """The checkpoint's recommended sampling settings (generation_config.json), by SamplingParams name."""
    try:
        config = generation_config_cls.from_pretrained(checkpoint).to_diff_dict()
    except (OSError, ValueError):
        return {}  # no generation_config.json
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    return {key: config[key] for key in GENERATION_DEFAULT_KEYS if isinstance(config.get(key), (int, float))}
