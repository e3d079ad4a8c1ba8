"""Reading GPTQ checkpoints (AutoGPTQ / GPTQModel layout, as in Qwen2.5-*-Instruct-GPTQ-Int4/Int8).

Per quantized linear with `bits` b (4 or 8) and p = 32 / b values per int32 word:

- ``qweight`` int32 [in / p, out]: q[i, o] sits in word [i // p, o] at bits (i % p) * b (packed along in).
- ``qzeros``  int32 [groups, out / p]: zero[g, o] sits in word [g, o // p] at bits (o % p) * b.
- ``scales``  fp16  [groups, out].
- ``g_idx``   int32 [in]: the group of each input feature (i // group_size unless act-order, desc_act).
- ``bias``    fp16  [out], optional.

weight[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]). The original ("gptq", v1) format
stores zero - 1, so the reader adds 1 back; checkpoint_format "gptq_v2" stores the zero itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from qwen_triton.quantization.formats import GroupwiseLinear, pack_nibbles, unpack_int32_words


def read_gptq_linear(tensors: Mapping[str, torch.Tensor], prefix: str, quant_config: Mapping) -> GroupwiseLinear:
    bits = int(quant_config.get("bits", 4))
    if bits not in (4, 8):
        raise ValueError(f"{prefix}: GPTQ with bits={bits} is not supported (4 or 8)")
    qweight = tensors[f"{prefix}.qweight"]
    in_features = qweight.shape[0] * 32 // bits
    group_size = int(quant_config.get("group_size", 128))
    group_size = in_features if group_size <= 0 else group_size  # -1: one group per output channel

    q = unpack_int32_words(qweight.t(), bits)  # [out, in]
    zeros = unpack_int32_words(tensors[f"{prefix}.qzeros"], bits).t()  # [out, groups]
    if quant_config.get("checkpoint_format", "gptq") != "gptq_v2":
        zeros = zeros + 1
    if int(zeros.max()) > 255:
        raise ValueError(f"{prefix}: a GPTQ zero point of {int(zeros.max())} does not fit 8 bits")
    scales = tensors[f"{prefix}.scales"].t().to(torch.float16)  # [out, groups]
    zeros = zeros[: scales.shape[0]]  # qzeros rows are padded up to a whole word of output channels

    in_perm = _act_order_permutation(tensors.get(f"{prefix}.g_idx"), in_features, group_size, prefix)
    if in_perm is not None:
        q = q[:, in_perm]
    packed = pack_nibbles(q) if bits == 4 else q.to(torch.uint8)
    return GroupwiseLinear(packed, scales, zeros, bits, group_size, tensors.get(f"{prefix}.bias"), in_features, in_perm)


def _act_order_permutation(g_idx: torch.Tensor | None, in_features: int, group_size: int, prefix: str):
    """None when groups are the natural i // group_size; else the input order that makes them contiguous."""
    natural = torch.arange(in_features) // group_size
    if g_idx is None or torch.equal(g_idx.long(), natural):
        return None
    perm = torch.argsort(g_idx.long(), stable=True)
    if not torch.equal(g_idx.long()[perm], natural):
        raise ValueError(f"{prefix}.g_idx does not assign exactly group_size={group_size} features per group")
    return perm
