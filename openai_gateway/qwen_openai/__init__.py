"""OpenAI-compatible API for qwen-triton: its own process, one gRPC stream to tritonserver per engine request."""

from .app import GatewaySettings, create_app

__all__ = ["GatewaySettings", "create_app"]
