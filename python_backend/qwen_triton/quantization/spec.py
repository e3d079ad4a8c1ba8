"""The rules that pick a storage format per module (`parse_spec`), the presets, and byte accounting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qwen_triton.errors import InvalidRequestError

# ----------------------------------------------------------------------------------------------------------
# Formats and rules
# ----------------------------------------------------------------------------------------------------------

DEFAULT_GROUP_SIZE = 128
ROLES = ("attention", "mlp", "lm_head", "embed")
ALL_ROLES = ("attention", "mlp", "lm_head")  # what "all" and a bare format cover; embeddings stay float

PRESETS = {
    # The seed's "layered" scheme: FFN 4-bit, attention 8-bit, lm_head and embeddings left in float.
    "layered": "attention=int8,mlp=int4,lm_head=none",
    "none": "",
}

# Leaf module name -> role, for our DecoderModel (fused qkv_proj / gate_up_proj) and for Hugging Face
# Llama/Qwen2 modules (separate q/k/v and gate/up), so the same rules apply to both. Which checkpoint modules
# make which of ours is the loader's table (models/loader.py DECODER_LINEARS); this layer sits below models
# and cannot import it, so tests/quant/test_streamed_load.py checks that the two agree.
DEFAULT_MODULE_ROLES: dict[str, str] = {
    "qkv_proj": "attention",
    "q_proj": "attention",
    "k_proj": "attention",
    "v_proj": "attention",
    "o_proj": "attention",
    "gate_up_proj": "mlp",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
    "lm_head": "lm_head",
}

SPEC_HELP = (
    "write comma-separated ROLE=FORMAT rules (roles: all, attention, mlp, lm_head, embed; formats: none, "
    "int8, int8:gN, int4, int4:gN, int4:sym, fp8), a bare FORMAT for all, or a preset: " + ", ".join(PRESETS)
)


@dataclass(frozen=True)
class QuantFormat:
    """One storage format: kind none/int8/int4/fp8; group_size None means per output channel."""

    kind: str = "none"
    group_size: int | None = None
    symmetric: bool = False

    def __str__(self) -> str:
        text = self.kind
        if self.group_size is not None:
            text += f":g{self.group_size}"
        if self.symmetric and self.kind == "int4":
            text += ":sym"
        return text


def parse_format(text: str, rule: str) -> QuantFormat:
    """``int4:g64:sym`` -> QuantFormat('int4', 64, True). `rule` is quoted in errors."""
    kind, *options = [part.strip() for part in text.strip().lower().split(":")]
    if kind in ("none", "float", "fp16", "bf16", "fp32"):
        kind = "none"
    if kind not in ("none", "int8", "int4", "fp8"):
        raise InvalidRequestError("quantization", f"rule {rule!r}: unknown format {kind!r}; {SPEC_HELP}")
    group_size = DEFAULT_GROUP_SIZE if kind == "int4" else None
    symmetric = False
    for option in options:
        if option == "sym" and kind == "int4":
            symmetric = True
        elif option.startswith("g") and option[1:].isdigit() and int(option[1:]) > 0 and kind in ("int4", "int8"):
            group_size = int(option[1:])
        else:
            raise InvalidRequestError(
                "quantization", f"rule {rule!r}: option {option!r} does not apply to {kind}; {SPEC_HELP}"
            )
    return QuantFormat(kind, group_size, symmetric)


def parse_spec(spec: str | Mapping[str, str] | None) -> dict[str, QuantFormat]:
    """Rules -> {role: QuantFormat} for every role in ROLES (unnamed roles get 'none')."""
    formats = {role: QuantFormat() for role in ROLES}
    if spec is None:
        return formats
    items = list(spec.items()) if isinstance(spec, Mapping) else _spec_items(spec)
    for role, text in items:
        rule = f"{role}={text}" if role else text
        if not role:
            if text.strip().lower() in PRESETS:
                formats.update(parse_spec(PRESETS[text.strip().lower()]))
                continue
            role = "all"
        role = role.strip().lower()
        fmt = parse_format(text, rule)
        if role == "all":
            formats.update({r: fmt for r in ALL_ROLES})
        elif role == "embed":
            if fmt.kind != "none":
                raise InvalidRequestError(
                    "quantization", f"rule {rule!r}: quantized embeddings are not supported; use embed=none"
                )
        elif role in ROLES:
            formats[role] = fmt
        else:
            raise InvalidRequestError("quantization", f"rule {rule!r}: unknown role {role!r}; {SPEC_HELP}")
    return formats


def _spec_items(spec: str) -> list[tuple[str, str]]:
    items = []
    for raw in spec.replace(";", ",").split(","):
        raw = raw.strip()
        if not raw:
            continue
        role, sep, text = raw.partition("=")
        if not sep:
            items.append(("", raw))
        elif not role.strip() or not text.strip():
            raise InvalidRequestError("quantization", f"rule {raw!r} is incomplete; {SPEC_HELP}")
        else:
            items.append((role, text))
    return items


# ----------------------------------------------------------------------------------------------------------
# Byte accounting without building anything (for the Qwen2.5 size table and the engine's memory planner)
# ----------------------------------------------------------------------------------------------------------


def linear_weight_bytes(in_features: int, out_features: int, fmt: QuantFormat, float_bytes: int = 2) -> int:
    """Resident bytes of one linear's weight in `fmt`: weight_bytes() of the module minus its bias."""
    if fmt.kind == "none":
        return in_features * out_features * float_bytes
    if fmt.kind in ("int8", "fp8") and fmt.group_size is None:
        return in_features * out_features + out_features * 4
    bits = 4 if fmt.kind == "int4" else 8
    groups = -(-in_features // fmt.group_size)
    return in_features * out_features * bits // 8 + out_features * groups * (2 + 1)  # fp16 scale + u8 zero
