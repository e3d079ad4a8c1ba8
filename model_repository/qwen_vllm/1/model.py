"""Triton entry point of the `qwen_vllm` model (vLLM-backend tensors); the logic lives in qwen_triton.serving.vllm_model."""

import os
import site
import sys

# The Python backend's stub runs an isolated interpreter that ignores PYTHONPATH: scripts/serve.py names
# the virtualenv in QWEN_TRITON_SITE_DIRS (unset in images that install the package system-wide).
_system_path = list(sys.path)
for _site_dir in filter(None, os.environ.get("QWEN_TRITON_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)
sys.path[:] = [p for p in sys.path if p not in _system_path] + _system_path

from qwen_triton.serving.vllm_model import TritonPythonModel  # noqa: E402,F401
