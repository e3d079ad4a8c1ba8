"""Reading AWQ checkpoints (AutoAWQ "gemm" version, as in Qwen2.5-*-Instruct-AWQ).

Per quantized linear (4-bit only, zero point on):

- ``qweight`` int32 [in, out / 8]: packed along out, 8 nibbles a word in AWQ's interleaved order: nibble k
  (bits 4k .. 4k+3) of word [i, j] holds output channel 8j + AWQ_ORDER[k].
- ``qzeros``  int32 [groups, out / 8], same interleaving.
- ``scales``  fp16  [groups, out].
- ``bias``    fp16  [out], optional.

weight[o, i] = scales[i // group_size, o] * (q[i, o] - zero[i // group_size, o]).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from qwen_triton.quantization.formats import GroupwiseLinear, pack_nibbles, unpack_int32_words

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Position in the word of output channel 8j + m (the inverse of AWQ_ORDER).
AWQ_POSITION = tuple(AWQ_ORDER.index(m) for m in range(8))


def deinterleave(values: torch.Tensor) -> torch.Tensor:
    """[..., out] in word order -> [..., out] in output-channel order."""
    words = values.shape[-1] // 8
    index = (torch.arange(words)[:, None] * 8 + torch.tensor(AWQ_POSITION)[None, :]).flatten()
    return values[..., index.to(values.device)]


def read_awq_linear(tensors: Mapping[str, torch.Tensor], prefix: str, quant_config: Mapping) -> GroupwiseLinear:
    bits = int(quant_config.get("bits", quant_config.get("w_bit", 4)))
    version = str(quant_config.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not quant_config.get("zero_point", True):
        raise ValueError(
            f"{prefix}: AWQ bits={bits}, version={version!r}, zero_point={quant_config.get('zero_point', True)} "
            "is not supported; only 4-bit 'gemm' with zero points (what Qwen publishes)"
        )
    group_size = int(quant_config.get("group_size", quant_config.get("q_group_size", 128)))
    q = deinterleave(unpack_int32_words(tensors[f"{prefix}.qweight"], 4)).t()  # [out, in]
    zeros = deinterleave(unpack_int32_words(tensors[f"{prefix}.qzeros"], 4)).t()  # [out, groups]
    scales = tensors[f"{prefix}.scales"].t().to(torch.float16)
    in_features = q.shape[1]
    group_size = in_features if group_size <= 0 else group_size
    return GroupwiseLinear(pack_nibbles(q), scales, zeros, 4, group_size, tensors.get(f"{prefix}.bias"), in_features)
