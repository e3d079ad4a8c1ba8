"""Guides compiled into grammars the matcher runs, once per distinct guide (an LRU cache).

The library is xgrammar (docs/structured_output.md says why). A compiled grammar holds the token-level
tables of one guide over this tokenizer's vocabulary; matchers of any number of sequences share it.
A guide the library rejects becomes an InvalidRequestError naming the request field and the library's
reason, so the client gets a 400 it can act on.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import xgrammar

from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding, choice_regex

DEFAULT_CACHE_SIZE = 256
# Compact JSON (no free whitespace): a model, above all a small one, that may emit whitespace between
# tokens can spend its whole budget on newlines; compact output also costs fewer tokens.
JSON_SEPARATORS = (",", ":")
# The library prefixes its messages with a time and a C++ source location; the client needs the rest.
_LOCATION_PREFIX = re.compile(r"^\s*\[[\d:]+\]\s+\S+:\d+:\s*")


class GrammarCompiler:
    """Compiles guides for one tokenizer. Thread-safe: the serving thread compiles while validating a
    request (so a bad guide fails before the request is queued) and the engine thread reads the cache."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: list[int], cache_size: int = DEFAULT_CACHE_SIZE):
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        info = xgrammar.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids
        )
        # Our own cache below bounds the entries; the library's would keep every guide ever seen.
        self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str], xgrammar.CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, guided: GuidedDecoding) -> xgrammar.CompiledGrammar:
        key = guided.cache_key
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        compiled = self._compile_uncached(guided)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        return len(self._cache)

    def _compile_uncached(self, guided: GuidedDecoding) -> xgrammar.CompiledGrammar:
        try:
            return self._dispatch(guided)
        except (RuntimeError, ValueError, xgrammar.InvalidJSONError) as error:
            reason = _LOCATION_PREFIX.sub("", str(error)).strip() or type(error).__name__
            raise InvalidRequestError(guided.field, f"the {guided.kind} guide does not compile: {reason}") from None

    def _dispatch(self, guided: GuidedDecoding) -> xgrammar.CompiledGrammar:
        compile_json = self._compiler.compile_json_schema
        if guided.kind == "json_object":
            # OpenAI's json_object promises an object, not any JSON value.
            return compile_json('{"type": "object"}', any_whitespace=False, separators=JSON_SEPARATORS)
        if guided.kind == "json_schema":
            return compile_json(guided.guide, any_whitespace=False, separators=JSON_SEPARATORS)
        if guided.kind == "regex":
            return self._compiler.compile_regex(guided.guide)
        if guided.kind == "ebnf_grammar":
            return self._compiler.compile_grammar(guided.guide)
        if guided.kind == "choice":
            return self._compiler.compile_regex(choice_regex(guided.choices))
        raise AssertionError(f"GuidedDecoding validated an unknown kind {guided.kind!r}")
