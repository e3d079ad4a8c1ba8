"""The kernels package is safe to import on any machine: triton loads only when a kernel is used."""

import subprocess
import sys

import torch


def test_package_import_does_not_import_triton():
    code = (
        "import sys, qwen_triton.kernels as k; "
        "assert 'triton' not in sys.modules, 'triton imported eagerly'; "
        "print(k.triton_available())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("True", "False")


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from qwen_triton import kernels

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.kernels_usable("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.kernels_usable("cpu") == kernels.triton_available()
    assert kernels.kernels_usable("cuda") == (kernels.triton_available() and torch.cuda.is_available())


def test_unknown_attribute_is_an_attribute_error():
    from qwen_triton import kernels

    try:
        _ = kernels.no_such_kernel
    except AttributeError as exc:
        assert "no_such_kernel" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
