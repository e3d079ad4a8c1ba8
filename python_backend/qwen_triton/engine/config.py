"""Engine settings: one dataclass, filled from keyword arguments, a CLI, or config.pbtxt parameters."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class EngineConfig:
    model: str = "models/smollm2-135m-instruct"  # checkpoint directory or hub id
    load_format: str = "auto"  # auto: the checkpoint's safetensors; random: random weights of
    # the config's shapes (benchmarks: true timings, no true text)
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    quantization: str = "none"  # weight rules, e.g. "int8", "layered", "mlp=int4,attention=int8"
    kv_cache_dtype: str = "auto"  # auto (= model dtype), int8, fp8
    kv_memory_fraction: float = 0.9  # CUDA: share of free memory after weights for the KV pool
    kv_cache_bytes: int = 0  # explicit KV pool size in bytes (0 = derive)
    num_kv_blocks: int = 0  # explicit block count (0 = derive from bytes)
    block_size: int = 16  # tokens per KV block
    max_num_seqs: int = 64  # sequences in the running batch
    max_num_batched_tokens: int = 2048  # tokens per step; longer prefills are chunked
    max_prefill_tokens_while_decoding: int = 0  # prompt tokens per step while others decode (0 = no cap)
    max_model_len: int = 0  # prompt + output; 0 = the checkpoint's limit
    enable_prefix_caching: bool = True
    attention_window: int = 0  # 0 = full attention; W = keep the last W tokens ...
    attention_sinks: int = 4  # ... plus the first S tokens (StreamingLLM)
    cuda_graphs: bool = True  # capture decode steps on CUDA
    mixed_graph_max_tokens: int = 1024  # CUDA: mixed steps up to this many tokens replay graphs (0 = eager)
    overlap_steps: bool = True  # launch decode step n+1 before reading step n's tokens
    seed: int = 0  # for requests without a seed
    # Fail-safe limits (async_engine): refuse, retryably, a request that would wait behind this many (0 =
    # unbounded); end one still unscheduled after this many seconds (0 = never); call the engine failed
    # when its thread has not gone round its loop (one step) for this many seconds (0 = never).
    max_waiting_requests: int = 0
    queue_timeout_s: float = 0.0
    stall_timeout_s: float = 0.0
    tensor_parallel_size: int = 1  # ranks (GPUs of one host) the model is split over; 1 = no split, no workers

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        if self.load_format not in ("auto", "random"):
            raise ValueError(f"load_format: {self.load_format!r} is not one of auto, random")
        if self.kv_cache_dtype not in ("auto", "int8", "fp8"):
            raise ValueError(f"kv_cache_dtype: {self.kv_cache_dtype!r} is not one of auto, int8, fp8")
        if not 0.0 < self.kv_memory_fraction <= 1.0:
            raise ValueError(f"kv_memory_fraction: {self.kv_memory_fraction} must be in (0, 1]")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        for name in (
            "num_kv_blocks",
            "kv_cache_bytes",
            "max_model_len",
            "attention_window",
            "attention_sinks",
            "max_prefill_tokens_while_decoding",
            "mixed_graph_max_tokens",
            "max_waiting_requests",
            "queue_timeout_s",
            "stall_timeout_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> EngineConfig:
        """Build from string values (config.pbtxt parameters, CLI --param). Unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, raw in params.items():
            if key not in known:
                raise ValueError(f"{key}: unknown engine parameter; known: {', '.join(sorted(known))}")
            values[key] = _parse(key, known[key].type, str(raw).strip())
        return cls(**values)


def _parse(key: str, type_name, raw: str):
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if type_name == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{key}: {raw!r} is not a valid {type_name}") from None
    return raw
