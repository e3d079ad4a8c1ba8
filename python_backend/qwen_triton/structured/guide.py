"""What a request asks its output to follow: `GuidedDecoding`, read from the names clients already send.

TensorRT-LLM backend clients send `guided_decoding_guide_type` + `guided_decoding_guide`; vLLM backend
clients send a `structured_outputs` dict inside `sampling_parameters`. Both become one `GuidedDecoding`,
validated here for shape only (is it JSON, is it a list of strings); whether the grammar compiles is the
compiler's question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qwen_triton.errors import InvalidRequestError

KINDS = ("json_object", "json_schema", "regex", "ebnf_grammar", "choice")

# TensorRT-LLM's guide types -> our kinds. Its "json" means "any JSON object", with no schema.
TRTLLM_GUIDE_TYPES = {
    "json": "json_object",
    "json_object": "json_object",
    "json_schema": "json_schema",
    "regex": "regex",
    "ebnf_grammar": "ebnf_grammar",
}

# vLLM's structured_outputs keys -> our kinds. Exactly one of them may be set.
VLLM_KEYS = {"json": "json_schema", "json_object": "json_object", "regex": "regex", "grammar": "ebnf_grammar"}
VLLM_KEYS_CHOICE = "choice"

MAX_GUIDE_CHARS = 64 * 1024  # a guide is compiled on the engine's thread: bound the work one request can ask
_REGEX_SPECIAL = set(r"\.^$|?*+()[]{}/")


@dataclass(frozen=True)
class GuidedDecoding:
    """`kind` is one of KINDS. `guide` is the schema text (json_schema), the pattern (regex), the EBNF text
    (ebnf_grammar), a JSON list of strings (choice) or "" (json_object). `field` is the request field the
    guide came from, so a compile error names what the client must fix."""

    kind: str
    guide: str = ""
    field: str = "guided_decoding_guide"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.kind, self.guide)

    @property
    def choices(self) -> list[str]:
        return json.loads(self.guide) if self.kind == "choice" else []

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise InvalidRequestError(self.field, f"unknown guide kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(self.guide, str):
            raise InvalidRequestError(self.field, f"the guide must be a string, got {type(self.guide).__name__}")
        if len(self.guide) > MAX_GUIDE_CHARS:
            raise InvalidRequestError(
                self.field, f"the guide is {len(self.guide)} characters; at most {MAX_GUIDE_CHARS}"
            )
        if self.kind == "json_object":
            return
        if not self.guide.strip():
            raise InvalidRequestError(self.field, f"a {self.kind} guide must not be empty")
        if self.kind == "json_schema":
            _parse_schema(self.guide, self.field)
        if self.kind == "choice":
            _check_choices(_parse_json(self.guide, self.field, "a JSON list of strings"), self.field)

    @classmethod
    def from_trtllm(cls, guide_type: str | None, guide: str | None) -> GuidedDecoding | None:
        """The TensorRT-LLM backend's two inputs. Neither set: no guide."""
        if not guide_type and not guide:
            return None
        if not guide_type:
            raise InvalidRequestError(
                "guided_decoding_guide_type",
                f"required with guided_decoding_guide; one of: {', '.join(TRTLLM_GUIDE_TYPES)}",
            )
        kind = TRTLLM_GUIDE_TYPES.get(guide_type)
        if kind is None:
            raise InvalidRequestError(
                "guided_decoding_guide_type", f"unknown type {guide_type!r}; one of: {', '.join(TRTLLM_GUIDE_TYPES)}"
            )
        if kind != "json_object" and not guide:
            raise InvalidRequestError(
                "guided_decoding_guide", f"required for guided_decoding_guide_type {guide_type!r}"
            )
        return cls(kind=kind, guide=guide or "", field="guided_decoding_guide")

    @classmethod
    def from_vllm(cls, structured_outputs: dict | None, field: str = "structured_outputs") -> GuidedDecoding | None:
        """vLLM's `structured_outputs` dict: exactly one of json (a schema, dict or text), json_object (true),
        regex, grammar (EBNF) or choice (list of strings). Unknown keys are refused."""
        if structured_outputs is None:
            return None
        if not isinstance(structured_outputs, dict):
            raise InvalidRequestError(field, "must be an object with one of: " + _vllm_key_list())
        unknown = [key for key in structured_outputs if key not in VLLM_KEYS and key != VLLM_KEYS_CHOICE]
        if unknown:
            raise InvalidRequestError(
                field, f"unknown key(s) {', '.join(map(repr, unknown))}; known: {_vllm_key_list()}"
            )
        given = {key: value for key, value in structured_outputs.items() if value is not None and value is not False}
        if len(given) != 1:
            raise InvalidRequestError(field, f"set exactly one of {_vllm_key_list()}, got {len(given)}")
        ((key, value),) = given.items()
        return _from_vllm_entry(key, value, f"{field}.{key}")


def _from_vllm_entry(key: str, value, field: str) -> GuidedDecoding:
    if key == "json_object":
        if value is not True:
            raise InvalidRequestError(field, f"must be true, got {value!r}")
        return GuidedDecoding("json_object", "", field)
    if key == "json":
        if isinstance(value, dict):
            return GuidedDecoding("json_schema", json.dumps(value), field)
        if isinstance(value, str):
            return GuidedDecoding("json_schema", value, field)
        raise InvalidRequestError(field, f"must be a JSON schema (object or its text), got {type(value).__name__}")
    if key == VLLM_KEYS_CHOICE:
        _check_choices(value, field)
        return GuidedDecoding("choice", json.dumps(value), field)
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, got {type(value).__name__}")
    return GuidedDecoding(VLLM_KEYS[key], value, field)


def _vllm_key_list() -> str:
    return ", ".join([*VLLM_KEYS, VLLM_KEYS_CHOICE])


def _parse_json(text: str, field: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(field, f"must be {what}: {error}") from None


def _parse_schema(text: str, field: str) -> None:
    schema = _parse_json(text, field, "a JSON schema (JSON text)")
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError(field, f"a JSON schema is an object (or true/false), got {type(schema).__name__}")


def _check_choices(value, field: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise InvalidRequestError(field, "choice must be a non-empty list of non-empty strings")


def choice_regex(choices: list[str]) -> str:
    """A regex matching exactly one of `choices`, each taken literally (how a choice guide is compiled)."""
    return "(" + "|".join("".join("\\" + c if c in _REGEX_SPECIAL else c for c in item) for item in choices) + ")"
