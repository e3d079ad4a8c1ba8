"""qwen_client: a thin typed client for the qwen-triton server (Triton's HTTP and gRPC protocols).

from qwen_client import QwenClient
with QwenClient("localhost:8001") as client:
    print(client.chat([{"role": "user", "content": "What is the capital of France?"}]).text)
    for delta in client.stream("Once upon a time", max_tokens=32):
        print(delta, end="")
"""

from .async_client import AsyncQwenClient
from .client import QwenClient
from .errors import (
    BadRequestError,
    ConnectionFailedError,
    InvalidParameterError,
    QwenClientError,
    RequestTimeoutError,
    ServerError,
)
from .params import GenerationParams
from .results import Chunk, Completion, Usage
from .server_info import Health, ModelInfo

__all__ = [
    "AsyncQwenClient",
    "BadRequestError",
    "Chunk",
    "Completion",
    "ConnectionFailedError",
    "GenerationParams",
    "Health",
    "InvalidParameterError",
    "ModelInfo",
    "QwenClient",
    "QwenClientError",
    "RequestTimeoutError",
    "ServerError",
    "Usage",
]
