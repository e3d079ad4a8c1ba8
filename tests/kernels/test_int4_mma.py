"""The tensor-core int4 kernel (kernels/int4_mma.py): compiled for Hopper on any machine, and on a CUDA GPU
against the float64 reference through int4_linear(path="mma")."""

import itertools

import pytest
import torch
from kernel_env import HAS_CUDA, needs_kernels
from test_quant_matmul import int4_case

pytestmark = needs_kernels
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA GPU: Gluon kernels have no CPU interpreter (the compile test runs here)"
)


_COMPILE_FOR_HOPPER = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from qwen_triton.kernels.int4_mma import _int4_mma_kernel

dtype, zeros, split = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
pointers = {"x_ptr": "i32", "w_ptr": "u8", "scales_ptr": "fp16", "zeros_ptr": "u8", "bias_ptr": dtype}
pointers.update(y_ptr=dtype, part_ptr="fp32", count_ptr="i32")
signature = {name: "*" + kind for name, kind in pointers.items()}
signature.update({name: "i32" for name in "M N K k_per_split stride_xm stride_wn stride_sn stride_zn stride_ym".split()})
constants = dict(GROUP=128, HAS_ZEROS=zeros, HAS_BIAS=True, SPLIT=split, SERIAL=split, F16=dtype == "fp16")
constants.update(BLOCK_N=64, NW=4, STEP_GROUPS=4 if split else 1, TILED=not split, PDL=True)
signature.update({name: "constexpr" for name in constants})
source = GluonASTSource(_int4_mma_kernel, signature, constexprs=constants)
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("mma.sync", compiled.asm["ptx"].count("mma.sync.aligned.m16n8k16"))
"""


@pytest.mark.parametrize(
    "dtype, zeros, split", [("bf16", "0", "1"), ("fp16", "1", "0")], ids=["bf16-split", "fp16-zeros"]
)
def test_compiles_for_hopper_without_a_gpu(dtype, zeros, split):
    """ptxas (shipped with Triton) builds the kernel for sm_90 on any machine, so layout or PTX mistakes
    show on CI too. In a child process: the kernel tests' CPU interpreter (TRITON_INTERPRET) cannot compile."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_HOPPER, dtype, zeros, split], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mma_instructions = int(done.stdout.split("mma.sync")[-1])
    assert mma_instructions > 0, "the kernel's dots did not lower to mma.sync"


def test_applies_only_where_it_can_run():
    from qwen_triton.kernels import int4_mma

    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    assert not int4_mma.applies(x, 1, 256, None, 128)  # CPU tensors take quant_matmul's kernels
    if HAS_CUDA:
        cuda = x.cuda()
        assert int4_mma.applies(cuda, 1, 256, None, 128)
        assert not int4_mma.applies(cuda, 9, 256, None, 128)  # rows past the MMA's 8 columns
        assert not int4_mma.applies(cuda, 1, 256, None, 32)  # a group shorter than a fragment row
        assert not int4_mma.applies(cuda, 1, 320, None, 128)  # a ragged last group
        assert not int4_mma.applies(cuda.float(), 1, 256, None, 128)
        assert not int4_mma.applies(cuda, 1, 256, torch.zeros(1, 2, device="cuda"), 128)  # float zero points


@needs_cuda
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 6e-3), (torch.float16, 2e-3)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [64, 128, 256])
def test_matches_the_reference(generator, rel_error, rows, dtype, tolerance, symmetric, group):
    """200 outputs leave a ragged tile of 64 or 128; 1536 inputs split K over several programs, whose
    partials the last one adds up; bias once after that sum; 1, 2 or 4 groups a step (4 falls back to 2
    where the groups do not divide by 4)."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear, int4_mma

    x, packed, scales, zeros = int4_case(generator, 200, 1536, rows, group, dtype)
    zeros = None if symmetric else zeros
    bias = torch.randn(200, generator=generator).to(dtype)
    assert int4_mma.applies(x.cuda(), rows, 1536, zeros, group)
    cuda = [t.cuda() if t is not None else None for t in (x, packed, scales, zeros, bias)]
    expected = int4_linear_reference(x, packed, scales, zeros, group, bias, dtype=torch.float64)
    for split_k, step_groups in itertools.product((None, 1, 5), (1, 2, 4)):
        config = dict(STEP_GROUPS=step_groups)
        out = int4_linear(*cuda[:4], group, cuda[4], config=config, split_k=split_k, path="mma")
        assert out.shape == (rows, 200) and out.dtype == dtype
        assert rel_error(out, expected) < tolerance, f"split_k={split_k} step_groups={step_groups}"


@needs_cuda
def test_wide_layer_and_3d_input(generator, rel_error):
    """A layer of many output tiles and no K split; x [batch, 1, in] keeps its leading dimensions."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    out_f = 16384 + 64
    x, packed, scales, _ = int4_case(generator, out_f, 1024, 2, 128, torch.bfloat16)
    out = int4_linear(x.view(2, 1, 1024).cuda(), packed.cuda(), scales.cuda(), None, 128, path="mma")
    assert out.shape == (2, 1, out_f)
    assert (
        rel_error(out.view(2, out_f), int4_linear_reference(x, packed, scales, None, 128, dtype=torch.float64)) < 6e-3
    )


@needs_cuda
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_tiled_layout_matches_the_reference(generator, rel_error, rows, symmetric):
    """int4_layout's tiled blocks (200 outputs: the last block padded) give the row-major layout's result, for
    ragged tails of groups a step (13 groups) and split K."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_layout, int4_mma

    x, packed, scales, zeros = int4_case(generator, 200, 13 * 128, rows, 128, torch.bfloat16)
    zeros = None if symmetric else zeros
    expected = int4_linear_reference(x, packed, scales, zeros, 128, dtype=torch.float64)
    tiled = int4_layout.tiled(packed.cuda(), 128)
    assert tiled.shape == (4, 13, int4_layout.TILE_ROWS, 64)
    cuda = [t.cuda() if t is not None else None for t in (x, scales, zeros)]
    for split_k, step_groups in itertools.product((1, 3), (1, 2, 4)):
        config = dict(BLOCK_N=64, num_warps=2, STEP_GROUPS=step_groups)
        out = int4_mma.int4_mma_linear(
            cuda[0], tiled, cuda[1], cuda[2], 128, config=config, split_k=split_k, tiled=True
        )
        assert rel_error(out, expected) < 6e-3, f"split_k={split_k} step_groups={step_groups}"


@needs_cuda
def test_forced_path_names_what_it_needs(generator):
    from qwen_triton.kernels import int4_linear

    x, packed, scales, _ = int4_case(generator, 64, 320, 1, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="path: 'mma'"):
        int4_linear(x.cuda(), packed.cuda(), scales.cuda(), None, 128, path="mma")  # a ragged last group
    x9, packed, scales, _ = int4_case(generator, 64, 256, 9, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="path: 'mma'"):
        int4_linear(x9.cuda(), packed.cuda(), scales.cuda(), None, 64, path="mma")


def test_routing_by_rows(monkeypatch):
    from qwen_triton.kernels import int4_mma

    assert int4_mma.routed(1) and not int4_mma.routed(2)  # batch-1 decode, as measured on the H200
    monkeypatch.setattr(int4_mma, "ROUTED_MAX_ROWS", 8)
    assert int4_mma.routed(8) and not int4_mma.routed(9)


@pytest.mark.parametrize(
    "out_features, in_features, split_k, step_groups",
    [
        (59136, 8192, 1, 4),  # Qwen2.5-72B gate/up: its tiles alone fill the GPU
        (8192, 8192, 8, 4),  # 72B o_proj: about WARPS_PER_SM warps a multiprocessor
        (37888, 3584, 2, 4),  # 7B gate/up: 1.8 -> 2 splits (nearest, not floor)
        (4608, 3584, 14, 2),  # 7B qkv: wants 15 slices, K has 7 steps of 4 groups -> steps of 2
    ],
)
def test_launch_config_splits_k_to_fill_the_gpu(monkeypatch, out_features, in_features, split_k, step_groups):
    """The rule on an H200's 132 multiprocessors (a CPU test: the rule is host code)."""
    from qwen_triton.kernels import int4_mma

    monkeypatch.setattr(int4_mma, "multiprocessor_count", lambda index: 132)
    cfg = int4_mma.launch_config(out_features, in_features, 128, torch.device("cpu"))
    assert (cfg["split_k"], cfg["STEP_GROUPS"]) == (split_k, step_groups)
