"""qwen_triton: a continuous-batching, paged-KV inference engine for Qwen2.5 (and Llama) checkpoints.

Usable on its own (``qwen-engine`` CLI) and hosted by Triton's Python backend (``serving.triton_model``).
See docs/CONTRACTS.md for the module map.
"""

__version__ = "0.1.0"
