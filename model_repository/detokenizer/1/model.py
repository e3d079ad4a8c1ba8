"""Triton model `detokenizer`: output_ids -> text_output (stage 3 of qwen_pipeline)."""
import json
import os
import site
import sys

# The Python backend's stub runs an isolated interpreter that ignores PYTHONPATH: scripts/serve.py names
# the virtualenv in QWEN_TRITON_SITE_DIRS (unset in images that install the package system-wide).
_system_path = list(sys.path)
for _site_dir in filter(None, os.environ.get("QWEN_TRITON_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)
sys.path[:] = [p for p in sys.path if p not in _system_path] + _system_path

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        checkpoint = json.loads(args["model_config"])["parameters"]["model"]["string_value"]
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "output_ids").as_numpy().reshape(-1)
            text = self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))]))
        return responses
