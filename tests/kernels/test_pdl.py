"""Programmatic dependent launch (kernels/pdl.py): when it is on, and that a chain of dependent kernels
captured in a CUDA graph with it computes bit for bit what the same chain computes launched one by one
without it (a kernel reading its input before the previous kernel finished would show as a difference)."""

import pytest
import torch
from kernel_env import HAS_CUDA, HAS_TRITON, needs_kernels

pytestmark = needs_kernels


def test_off_on_cpu_and_under_the_switch(monkeypatch):
    from qwen_triton.kernels.pdl import ENV_SWITCH, launch_options, pdl_enabled

    assert not pdl_enabled(torch.device("cpu"))
    assert launch_options(False) == {}  # the interpreter never sees a launch_pdl option
    assert launch_options(True) == {"launch_pdl": True}
    if HAS_CUDA:
        monkeypatch.setenv(ENV_SWITCH, "0")
        assert not pdl_enabled(torch.device("cuda"))


def _hopper() -> bool:
    return HAS_CUDA and HAS_TRITON and torch.cuda.get_device_capability()[0] >= 9


def _layers(generator, hidden=1024, inter=2816, layers=4):
    """Weights of a few decoder-like steps: norm, dense linear, SiLU*up + dense down, int8 and int4."""

    def randn(*shape):
        return (torch.randn(*shape, generator=generator) * 0.05).to(torch.bfloat16).cuda()

    out = []
    for _ in range(layers):
        out.append(
            dict(
                norm=randn(hidden) + 1,
                up=randn(2 * inter, hidden),
                down=randn(hidden, inter),
                q8=torch.randint(-127, 128, (hidden, hidden), generator=generator, dtype=torch.int8).cuda(),
                s8=(torch.rand(hidden, generator=generator) * 1e-3).cuda(),
                q4=torch.randint(0, 256, (hidden, hidden // 2), generator=generator, dtype=torch.uint8).cuda(),
                s4=(torch.rand(hidden, hidden // 128, generator=generator) * 1e-2).half().cuda(),
                z4=torch.randint(0, 16, (hidden, hidden // 128), generator=generator, dtype=torch.uint8).cuda(),
            )
        )
    return out


def _chain(x, residual, layers):
    from qwen_triton import kernels
    from qwen_triton.kernels.dense_gemv import dense_gate_up_silu

    for w in layers:
        normed, residual = kernels.add_rms_norm(x, residual.clone(), w["norm"], 1e-6)
        h = kernels.dense_linear(dense_gate_up_silu(normed, w["up"]), w["down"])
        h = kernels.int8_linear(h, w["q8"], w["s8"])
        x = kernels.int4_linear(h, w["q4"], w["s4"], w["z4"], 128)
    return x, residual


@pytest.mark.skipif(not _hopper(), reason="PDL needs a CUDA GPU of compute capability >= 9.0 (CI has none)")
def test_graph_with_pdl_equals_serial_launches(monkeypatch, generator):
    from qwen_triton.kernels.pdl import ENV_SWITCH

    layers = _layers(generator)
    inputs = [
        (
            torch.randn(1, 1024, generator=generator).to(torch.bfloat16).cuda(),
            torch.randn(1, 1024, generator=generator).to(torch.bfloat16).cuda(),
        )
        for _ in range(8)
    ]
    monkeypatch.setenv(ENV_SWITCH, "0")
    expected = [_chain(x, r, layers) for x, r in inputs]

    monkeypatch.setenv(ENV_SWITCH, "1")
    static_x, static_r = (t.clone() for t in inputs[0])
    _chain(static_x, static_r, layers)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_x, out_r = _chain(static_x, static_r, layers)
    for (x, r), (want_x, want_r) in zip(inputs, expected):
        static_x.copy_(x)
        static_r.copy_(r)
        graph.replay()
        assert torch.equal(out_x, want_x) and torch.equal(out_r, want_r)
