"""`qwen-openai`: serve the OpenAI API in front of a running tritonserver.

    qwen-openai --triton-grpc 127.0.0.1:8001 --host 127.0.0.1 --port 9000 --model-name qwen \
        --served-model-name Qwen2.5-7B-Instruct --api-key-file /run/secrets/openai-api-key

The API key (optional) comes from --api-key-file, else from the environment variable QWEN_OPENAI_API_KEY;
with neither, /v1/* is open. /health and /metrics never need it (probes and Prometheus).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

from .app import GatewaySettings, create_app

API_KEY_ENV = "QWEN_OPENAI_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qwen-openai", description=__doc__.splitlines()[0])
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001", help="tritonserver's gRPC address (host:port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--model-name", default="qwen", help="the Triton model to send requests to")
    parser.add_argument(
        "--served-model-name", help="the model name clients send and /v1/models lists (default: --model-name)"
    )
    parser.add_argument("--api-key-file", type=Path, help=f"file holding the API key (else ${API_KEY_ENV})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def read_api_key(path: Path | None) -> str | None:
    if path is not None:
        key = path.read_text().strip()
        if not key:
            raise SystemExit(f"qwen-openai: --api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings(
        triton_grpc=args.triton_grpc,
        model_name=args.model_name,
        served_model_name=args.served_model_name,
        api_key=read_api_key(args.api_key_file),
    )
    app = create_app(settings)
    auth = "API key required" if settings.api_key else "no API key"
    print(
        f"qwen-openai: http://{args.host}:{args.port}/v1 -> Triton gRPC {args.triton_grpc} model "
        f"{args.model_name!r} as {settings.public_name!r} ({auth})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
