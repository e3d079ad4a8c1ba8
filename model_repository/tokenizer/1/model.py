"""Triton model `tokenizer`: text_input or messages -> input_ids (stage 1 of qwen_pipeline)."""
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
from transformers import AutoConfig  # noqa: E402

from qwen_triton.errors import InvalidRequestError  # noqa: E402
from qwen_triton.request_parsing import client_error_message, parse_request  # noqa: E402
from qwen_triton.tokenization import PromptTokenizer  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        checkpoint = json.loads(args["model_config"])["parameters"]["model"]["string_value"]
        hf_config = AutoConfig.from_pretrained(checkpoint)
        # The engine enforces the served model length; here only the checkpoint's own limit applies.
        self.max_len = hf_config.max_position_embeddings
        self.tokenizer = PromptTokenizer(checkpoint, hf_config, self.max_len)

    def execute(self, requests):
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request):
        arrays = {}
        for name in ("text_input", "messages"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        try:
            ids = self.tokenizer.encode(**parse_request(arrays, self.max_len).prompt)
        except InvalidRequestError as error:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(client_error_message(error), pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse([pb_utils.Tensor("input_ids", np.array([ids], dtype=np.int64))])
