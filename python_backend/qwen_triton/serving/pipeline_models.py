"""The first and last stages of the `qwen_pipeline` ensemble, for clients that work in token ids:
`tokenizer` (text_input or messages -> input_ids) and `detokenizer` (output_ids -> text_output).
The model.py files in model_repository/ only import these classes."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoConfig, AutoTokenizer

from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.request_parsing import client_error_message, parse_request
from qwen_triton.tokenizer.prompt import PromptTokenizer


def _checkpoint(args) -> str:
    return json.loads(args["model_config"])["parameters"]["model"]["string_value"]


class TokenizerModel:
    def initialize(self, args):
        checkpoint = _checkpoint(args)
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
                error=pb_utils.TritonError(client_error_message(error), pb_utils.TritonError.INVALID_ARG)
            )
        return pb_utils.InferenceResponse([pb_utils.Tensor("input_ids", np.array([ids], dtype=np.int64))])


class DetokenizerModel:
    def initialize(self, args):
        self.tokenizer = AutoTokenizer.from_pretrained(_checkpoint(args))

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "output_ids").as_numpy().reshape(-1)
            text = self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))]
                )
            )
        return responses
