"""Weight-only quantization: quantized linear layers, the rules that pick a format per module, presets.

Three storage formats, all applied at load time from a float checkpoint with no calibration data:

- ``int8``  : per-output-channel symmetric int8 (`Int8Linear`): weight int8 [out, in] + scale fp32 [out].
- ``int4``  : group-wise asymmetric 4-bit (`GroupwiseLinear`, bits=4): two nibbles per uint8, packed along
              `in` so each output channel is one contiguous row; scales fp16 and zero points uint8, both
              [out, groups]. The same class holds 8-bit group-wise weights (``int8:g128``, GPTQ-Int8).
- ``fp8``   : float8 e4m3 with per-output-channel fp32 scales (`Fp8Linear`).

GPTQ and AWQ checkpoints are read into `GroupwiseLinear` too (see gptq.py, awq.py, and
`load_quantized_linear` here), so one layout serves every source and one GPU kernel serves them all.

Rules (`parse_spec`): ``"mlp=int4,attention=int8,lm_head=none"``, ``"all=int8"``, the shorthand ``"int8"``,
a group size ``"int4:g64"``, symmetric int4 ``"int4:sym"``, and presets (``"layered"``). Later rules win.
`quantize_model(model, spec)` swaps the matching nn.Linear modules in place and reports the bytes saved.

Each quantized linear's `forward` picks its own kernel: on CUDA with triton installed, its format's kernel
in ``kernels/quant_matmul.py`` (`kernel_forward`); elsewhere ``F.linear(x, dequantized_weight, bias)`` (fp8 on CUDA
also has torch._scaled_mm for large batches, see `Fp8Linear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwen_triton import kernels

# ----------------------------------------------------------------------------------------------------------
# Kernel registry: format name -> fn(module, x) -> y, used on CUDA inputs only (CPU always dequantizes).
# ----------------------------------------------------------------------------------------------------------


def _gpu_kernels_usable(x: torch.Tensor) -> bool:
    """The Triton kernels of ``kernels/quant_matmul.py`` serve a CUDA input when triton is installed."""
    return x.is_cuda and kernels.kernels_usable(x.device)


# From this many rows of x on (prefill chunks), a linear dequantizes its weight once on the device and runs
# cuBLAS on it (kernels/dequantize.py says why); fewer rows (decode, whose CUDA graphs stop at 256) take the
# format's weight-only kernel, which reads the quantized bytes alone. The memory plan counts the scratch
# weight (models/memory.py). Evidence: benchmarks/kernel_bench.py's *_deq columns.
DEQUANTIZED_MATMUL_MIN_ROWS = 512

# 4-bit group-wise weights on CUDA are stored in the tiled layout (GroupwiseLinear says why); False keeps
# them row-major (benchmarks compare the two).
TILE_INT4_ON_CUDA = True


def _rows(x: torch.Tensor, in_features: int) -> int:
    return x.numel() // in_features


def _bias_for(module: QuantizedLinear, x: torch.Tensor):
    return None if module.bias is None else module.bias.to(x.dtype)


class QuantizedLinear(nn.Module):
    """Base of the quantized linears: same call signature as nn.Linear (weight [out, in], optional bias)."""

    format_name = "abstract"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Bias stays in the checkpoint's float dtype: it is tiny and adding it is free.
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out, in] this module stands for."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CUDA inputs: the format's weight-only kernel (`kernel_forward`), or from DEQUANTIZED_MATMUL_MIN_ROWS
        rows on, its device dequantization and cuBLAS (`dequantized_forward`); elsewhere the reference."""
        if _gpu_kernels_usable(x):
            if x.is_cuda and _rows(x, self.in_features) >= DEQUANTIZED_MATMUL_MIN_ROWS:
                return self.dequantized_forward(x)
            return self.kernel_forward(x)
        return self.reference_forward(x)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """This format's Triton kernel; formats without one dequantize then matmul."""
        return self.reference_forward(x)

    def dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The weight dequantized by a device kernel into a scratch tensor of x's dtype, then F.linear (the
        same values as `reference_forward`'s weight); formats without such a kernel take the reference."""
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize then matmul: exact with respect to the stored weight, slow (the CPU path)."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize_weight(x.dtype), bias)

    def weight_bytes(self) -> int:
        """Bytes this module keeps resident: quantized weight, scales, zero points, bias, permutation."""
        return sum(buf.numel() * buf.element_size() for buf in self.buffers())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ----------------------------------------------------------------------------------------------------------
# Per output channel, symmetric: int8 here, fp8 below
# ----------------------------------------------------------------------------------------------------------


class PerChannelLinear(QuantizedLinear):
    """weight = qweight[o, i] * scale[o]: symmetric, one float32 scale per output channel (no zero point to
    store or add). Subclasses name the storage dtype, the largest stored magnitude and how scaled weights
    are put on the stored grid."""

    storage_dtype: torch.dtype
    max_value: float

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        out_features, in_features = qweight.shape
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", qweight.to(self.storage_dtype).contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> PerChannelLinear:
        w = weight.detach().float()
        scale = w.abs().amax(dim=1) / cls.max_value
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays all zero
        return cls(cls.to_grid(w / scale[:, None]), scale, bias)

    @classmethod
    def to_grid(cls, scaled: torch.Tensor) -> torch.Tensor:
        """Weights already divided by their channel's scale -> the values the storage dtype will hold."""
        raise NotImplementedError

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.scale[:, None]).to(dtype)

    def takes_gemv(self, x: torch.Tensor) -> bool:
        """Whether forward(x) reads this weight with the one-byte GEMV (kernels/dense_gemv.py's byte_linear):
        there, the MLP's gate_up may take byte_gate_up_silu, the same sums with SiLU*up in the epilogue."""
        return (
            _gpu_kernels_usable(x)
            and self._kernel_serves(x)
            and kernels.use_gemv(
                _rows(x, self.in_features), None, self.format_name, self.out_features, self.in_features
            )
        )

    def _kernel_serves(self, x: torch.Tensor) -> bool:
        """Whether forward(x) on CUDA runs kernel_forward (the Triton kernels) at all."""
        return _rows(x, self.in_features) < DEQUANTIZED_MATMUL_MIN_ROWS


class Int8Linear(PerChannelLinear):
    """weight = qweight[o, i] * scale[o]; qweight in [-127, 127]."""

    format_name = "int8"
    storage_dtype = torch.int8
    max_value = 127.0

    @classmethod
    def to_grid(cls, scaled: torch.Tensor) -> torch.Tensor:
        return torch.round(scaled).clamp(-127, 127)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.int8_linear(x, self.qweight, self.scale, _bias_for(self, x))

    def dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, kernels.dequantize_int8(self.qweight, self.scale, x.dtype), _bias_for(self, x))


# ----------------------------------------------------------------------------------------------------------
# Group-wise 4-bit / 8-bit with zero points (our int4, and what GPTQ / AWQ checkpoints become)
# ----------------------------------------------------------------------------------------------------------


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[out, in] integers 0..15 -> uint8 [out, in/2]; even column in the low nibble, odd in the high one."""
    if q.shape[-1] % 2:
        raise ValueError(f"4-bit packing needs an even number of input features, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in/2] -> uint8 [out, in], inverse of `pack_nibbles`."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def unpack_int32_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [..., n] -> int32 [..., n * 32/bits]: value k of word w lands at w * (32/bits) + k, taken from
    bits k*bits .. k*bits+bits-1 (the little-endian packing GPTQ and AWQ checkpoints both use)."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=words.device)
    values = (words.to(torch.int32)[..., None] >> shifts) & (2**bits - 1)  # the mask undoes sign extension
    return values.flatten(-2) if per_word > 1 else values[..., 0]


class GroupwiseLinear(QuantizedLinear):
    """weight[o, i] = (q[o, i] - zero[o, g]) * scale[o, g] with g = i // group_size.

    Asymmetric (a zero point per group) because: the 16 levels of int4 then cover [min, max] of each group
    instead of [-amax, amax], which cuts the error on skewed groups; zero points cost 1 byte per group
    (under 1 % of the weight bytes at group 128); and GPTQ and AWQ checkpoints are asymmetric anyway, so
    one layout covers all three sources. Symmetric int4 (``int4:sym``) is the special case zero = 8.

    `in_perm` (optional, int64 [in]) serves GPTQ act-order checkpoints: stored column j holds input
    feature in_perm[j], so that each group is contiguous in storage.

    4-bit weights given on, or moved to, a CUDA device where the kernels run are kept in
    kernels/int4_layout.py's tiled layout (``qweight`` 4-D), which the decode-row kernel streams near the copy rate; ``row_major_qweight``
    gives the [out, in/2] bytes back. ``device_layout=False`` keeps them row-major (a block of rows that
    the streaming loader copies into a tiled module).
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
        in_features: int | None = None,
        in_perm: torch.Tensor | None = None,
        device_layout: bool = True,
    ):
        if bits not in (4, 8):
            raise ValueError(f"group-wise quantization supports 4 or 8 bits, got {bits}")
        out_features = qweight.shape[0]
        in_features = in_features or qweight.shape[1] * 8 // bits
        super().__init__(in_features, out_features, bias)
        self.bits = bits
        self.group_size = group_size
        self.register_buffer("qweight", qweight.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.register_buffer("in_perm", None if in_perm is None else in_perm.to(torch.int64).contiguous())
        if device_layout:
            self.use_device_layout()

    def _apply(self, fn, recurse=True):
        """Every move (`to`, `cuda`, `to_empty`) goes through here: a module arriving on CUDA takes the
        layout the device's kernels read."""
        module = super()._apply(fn, recurse)
        self.use_device_layout()
        return module

    @staticmethod
    def _tiles(qweight: torch.Tensor, bits: int, group_size: int, in_features: int) -> bool:
        """Tiled where every int4 kernel of the device reads it: CUDA with the kernels, whole groups of a
        size the tiled layout takes."""
        if not (TILE_INT4_ON_CUDA and bits == 4 and qweight.is_cuda and kernels.kernels_usable(qweight.device)):
            return False
        from qwen_triton.kernels import int4_layout

        whole_groups = in_features % group_size == 0 and qweight.shape[1] * 2 == in_features
        return group_size in int4_layout.GROUP_SIZES and whole_groups

    def use_device_layout(self) -> None:
        """Store qweight in the layout its device's kernels read (row-major bytes on CUDA become tiled)."""
        if self.qweight.dim() == 2 and self._tiles(self.qweight, self.bits, self.group_size, self.in_features):
            from qwen_triton.kernels import int4_layout

            self.qweight = int4_layout.tiled(self.qweight, self.group_size)

    def row_major_qweight(self) -> torch.Tensor:
        """The packed bytes [out, in/2] (4-bit) or [out, in] (8-bit), whatever the stored layout."""
        if self.qweight.dim() == 2:
            return self.qweight
        from qwen_triton.kernels import int4_layout

        return int4_layout.row_major(self.qweight, self.out_features)

    @property
    def format_name(self) -> str:  # type: ignore[override]
        return f"int{self.bits}_groupwise"

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The int4 kernel; 8-bit groups and group sizes it cannot tile dequantize then matmul."""
        g = self.group_size
        if self.bits != 4 or g < 32 or g & (g - 1):  # the kernel tiles K by powers of two that divide the group
            return self.reference_forward(x)
        return kernels.int4_linear(self._storage_order(x), self.qweight, self.scales, self.zeros, g, _bias_for(self, x))

    def dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits != 4:
            return self.reference_forward(x)
        w = kernels.dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, x.dtype)
        return F.linear(self._storage_order(x), w[:, : self.in_features], _bias_for(self, x))

    def _storage_order(self, x: torch.Tensor) -> torch.Tensor:
        """act-order: x's inputs in storage order, instead of moving the weight's columns."""
        return x if self.in_perm is None else x.index_select(-1, self.in_perm)

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = False,
        scale_dtype: torch.dtype = torch.float16,
        device_layout: bool = True,
    ) -> GroupwiseLinear:
        out_features, in_features = weight.shape
        groups = _split_groups(weight.detach().float(), group_size)  # [out, G, group]
        qmax = 2**bits - 1
        if symmetric:
            mid = 2 ** (bits - 1)
            scale = groups.abs().amax(-1) / (mid - 1)
            zero = torch.full_like(scale, mid)
        else:
            # The range always includes 0: zero is then exactly representable and a group of equal values
            # cannot produce a degenerate (out of range) zero point.
            low = groups.amin(-1).clamp(max=0)
            high = groups.amax(-1).clamp(min=0)
            scale = (high - low) / qmax
            zero = None
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        # Never let a scale round to 0 in fp16 (a group of near-zero weights would divide by zero).
        scale = scale.clamp(min=torch.finfo(scale_dtype).tiny).to(scale_dtype).float()
        if zero is None:
            zero = torch.round(-low / scale).clamp(0, qmax)
        q = torch.round(groups / scale[..., None] + zero[..., None]).clamp(0, qmax)
        q = q.flatten(1)[:, :in_features]
        packed = pack_nibbles(q) if bits == 4 else q.to(torch.uint8)
        zero = zero.to(torch.uint8)
        return cls(
            packed, scale.to(scale_dtype), zero, bits, group_size, bias, in_features, device_layout=device_layout
        )

    def unpacked_qweight(self) -> torch.Tensor:
        """uint8 [out, in] in storage column order."""
        return unpack_nibbles(self.row_major_qweight()) if self.bits == 4 else self.qweight

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = self.unpacked_qweight().float()
        expand = lambda t: t.float().repeat_interleave(self.group_size, dim=1)[:, : self.in_features]
        w = (q - expand(self.zeros)) * expand(self.scales)
        if self.in_perm is not None:
            w = torch.empty_like(w).index_copy_(1, self.in_perm, w)
        return w.to(dtype)


def _split_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [out, ceil(in/group), group]; a short last group is padded with zeros (which the
    range already includes, so padding never changes a scale)."""
    if group_size <= 0:
        raise ValueError(f"group size must be positive, got {group_size}")
    out_features, in_features = w.shape
    pad = (-in_features) % group_size
    if pad:
        w = F.pad(w, (0, pad))
    return w.view(out_features, -1, group_size)


# ----------------------------------------------------------------------------------------------------------
# fp8 e4m3, per output channel
# ----------------------------------------------------------------------------------------------------------

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_MIN_CAPABILITY = (8, 9)  # Ada/Hopper: fp8 tensor cores for _scaled_mm, and Triton's e4m3 type

# Up to this many rows of x the weight-only Triton kernel serves fp8, above it
# torch._scaled_mm. 16 covers the decode batches (the CUDA-graph ladder's 1, 2, 4, 8, 16), where the win
# is certain: the int8 kernels of the same code took 11.2-11.7 us from 1 to 16 rows at 4608x3584 on H100,
# Fp8Linear's per-call activation quantization + _scaled_mm 30-38 us (benchmarks/kernel_bench.py columns).
# Prefill stays on _scaled_mm: fp8 tensor cores and the quantization amortized over many rows, where the
# kernel's GEMM reads and converts the whole weight again for every 64-row tile. The crossover itself is not
# measured yet (kernel_bench.py's fp8_wo column); int8 at 64 rows (21 us against Fp8Linear's 38 us) hints
# that it lies higher, so this is the conservative end.
FP8_WEIGHT_ONLY_MAX_ROWS = 16


class Fp8Linear(PerChannelLinear):
    """weight = qweight[o, i] (float8_e4m3fn) * scale[o].

    CPU: dequantize then matmul (weight-only numerics). CUDA, compute capability >= 8.9 (Ada/Hopper):
    - up to FP8_WEIGHT_ONLY_MAX_ROWS rows of x, where triton is installed (the Triton
      weight-only GEMV/GEMM), that kernel: it reads the fp8 weight once and leaves x unquantized,
      so results match the CPU path up to float rounding;
    - more rows (prefill), with in/out multiples of 16: torch._scaled_mm with the activations quantized to
      fp8 per token on the fly (W8A8, so results differ slightly from the CPU path);
    - more rows with other shapes: the kernel, else dequantize then matmul.
    Older GPUs dequantize then matmul.
    """

    format_name = "fp8"
    storage_dtype = torch.float8_e4m3fn
    max_value = FP8_MAX

    @classmethod
    def to_grid(cls, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.clamp(-FP8_MAX, FP8_MAX)  # rounded to e4m3 by the cast to the storage dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.cuda_path(x) if x.is_cuda else "reference"
        if path == "kernel":
            return self.kernel_forward(x)
        if path == "scaled_mm":
            return self._scaled_mm_forward(x)
        return self.reference_forward(x)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.cuda.get_device_capability(x.device) < FP8_MIN_CAPABILITY:  # Triton has no e4m3 type there
            return self.reference_forward(x)
        return kernels.fp8_linear(x, self.qweight, self.scale, _bias_for(self, x))

    def _kernel_serves(self, x: torch.Tensor) -> bool:
        return torch.cuda.get_device_capability(x.device) >= FP8_MIN_CAPABILITY and self.cuda_path(x) == "kernel"

    def cuda_path(self, x: torch.Tensor) -> str:
        """Which path serves a CUDA input x: "kernel", "scaled_mm" or "reference" (see the class doc)."""
        scaled_mm = self._scaled_mm_fits(x)
        small = x.numel() // self.in_features <= FP8_WEIGHT_ONLY_MAX_ROWS
        if _gpu_kernels_usable(x) and (small or not scaled_mm):
            return "kernel"
        return "scaled_mm" if scaled_mm else "reference"

    def _scaled_mm_fits(self, x: torch.Tensor) -> bool:
        return (
            torch.cuda.get_device_capability(x.device) >= FP8_MIN_CAPABILITY
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
        )

    def _scaled_mm_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
        x_fp8 = (rows.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        # Row-wise scales need a bf16 output; the second operand must be column-major, which .t() of the
        # row-major [out, in] weight is.
        y = torch._scaled_mm(
            x_fp8, self.qweight.t(), scale_a=x_scale, scale_b=self.scale.view(1, -1), out_dtype=torch.bfloat16
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


def concat_out_features(linears: list[nn.Module]) -> nn.Module:
    """Stack linears that read the same input into one (q,k,v -> qkv_proj; gate,up -> gate_up_proj).

    Works for nn.Linear and for quantized linears of one format: every quantization here is per output
    row, so stacking rows of the stored tensors is exact.
    """
    first = linears[0]
    cat = lambda attr: None if getattr(first, attr) is None else torch.cat([getattr(m, attr) for m in linears])
    if any(type(m) is not type(first) for m in linears):
        raise ValueError(f"cannot fuse linears of different types: {[type(m).__name__ for m in linears]}")
    if isinstance(first, nn.Linear):
        fused = nn.Linear(first.in_features, sum(m.out_features for m in linears), bias=first.bias is not None)
        fused = fused.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(cat("weight"))
            if first.bias is not None:
                fused.bias.copy_(cat("bias"))
        return fused
    if isinstance(first, PerChannelLinear):
        return type(first)(cat("qweight"), cat("scale"), cat("bias"))
    if isinstance(first, GroupwiseLinear):
        same = all(
            m.bits == first.bits
            and m.group_size == first.group_size
            and (m.in_perm is None) == (first.in_perm is None)
            and (m.in_perm is None or torch.equal(m.in_perm, first.in_perm))
            for m in linears
        )
        if not same:
            raise ValueError("cannot fuse group-wise linears with different bits, group size or act-order")
        return GroupwiseLinear(
            torch.cat([m.row_major_qweight() for m in linears]),  # re-tiled by the constructor
            cat("scales"),
            cat("zeros"),
            first.bits,
            first.group_size,
            cat("bias"),
            first.in_features,
            first.in_perm,
        )
    raise ValueError(f"cannot fuse {type(first).__name__}")
