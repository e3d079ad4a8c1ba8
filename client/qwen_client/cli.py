"""`qwen-client`: generate, chat, health, models and bench from the terminal.

qwen-client generate "Once upon a time" --max-tokens 32
qwen-client chat "What is the capital of France?"
qwen-client chat                      # interactive, keeps the conversation
qwen-client --protocol http health
qwen-client bench --concurrency 4 --num-requests 32 --prompt-tokens 128 --max-tokens 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from .bench import DEFAULT_MAX_TOKEN_ID, BenchConfig, arun_bench
from .client import QwenClient
from .client_base import DEFAULT_URLS
from .errors import InvalidParameterError, QwenClientError
from .params import INPUT_SPECS, GenerationParams

_EXIT_FAILED, _EXIT_BAD_INPUT = 1, 2


# --- options


def _connection_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("server")
    group.add_argument("--url", help="host:port (default localhost:8001 for grpc, localhost:8000 for http)")
    group.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    group.add_argument("--model", default="qwen", help="Triton model name (default: qwen)")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    group.add_argument("--retries", type=int, default=2, help="retries when the server cannot be reached")
    return parser


def _generation_options() -> argparse.ArgumentParser:
    """One flag per GenerationParams field, typed from the model input it fills."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("generation parameters (unset: the server's default)")
    for name in GenerationParams.__dataclass_fields__:
        spec, flag = INPUT_SPECS[name], "--" + name.replace("_", "-")
        if spec.datatype == "BOOL":
            group.add_argument(flag, dest=name, action="store_true", default=None)
        elif spec.is_list:
            item_type = str if spec.datatype == "BYTES" else int
            group.add_argument(flag, dest=name, type=item_type, action="append", help="repeat for several")
        else:
            group.add_argument(flag, dest=name, type=float if spec.datatype == "FP32" else int)
    return parser


def _params_from(args: argparse.Namespace) -> GenerationParams:
    values = {name: getattr(args, name) for name in GenerationParams.__dataclass_fields__}
    return GenerationParams(**{k: v for k, v in values.items() if v is not None})


def _client_from(args: argparse.Namespace, protocol: str | None = None) -> QwenClient:
    return QwenClient(args.url, protocol or args.protocol, args.model, timeout=args.timeout, retries=args.retries)


def build_parser() -> argparse.ArgumentParser:
    connection, generation = _connection_options(), _generation_options()
    parser = argparse.ArgumentParser(prog="qwen-client", description="Query a qwen-triton server.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", parents=[connection, generation], help="complete a prompt")
    generate.add_argument("prompt")
    generate.add_argument("--stream", action="store_true", help="print text as it is generated")
    generate.add_argument("--json", action="store_true", help="print the whole Completion as JSON")
    generate.set_defaults(handler=_cmd_generate)

    chat = commands.add_parser("chat", parents=[connection, generation], help="chat, streaming the answer")
    chat.add_argument("message", nargs="?", help="one question; leave out for an interactive session")
    chat.add_argument("--system", help="system prompt")
    chat.set_defaults(handler=_cmd_chat)

    health = commands.add_parser("health", parents=[connection], help="live / ready; exit status 0 if ready")
    health.set_defaults(handler=_cmd_health)

    models = commands.add_parser("models", parents=[connection], help="list the server's models")
    models.set_defaults(handler=_cmd_models)

    bench = commands.add_parser("bench", parents=[connection], help="concurrent streaming load test")
    bench.add_argument("--concurrency", type=int, default=4)
    bench.add_argument("--num-requests", type=int, default=32)
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    bench.add_argument("--max-token-id", type=int, default=DEFAULT_MAX_TOKEN_ID, help="prompt ids stay below it")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    bench.set_defaults(handler=_cmd_bench, timeout=300.0)
    return parser


# --- commands


def _cmd_generate(args: argparse.Namespace) -> int:
    with _client_from(args) as client:
        params = _params_from(args)
        if args.stream:
            for delta in client.stream(args.prompt, params):
                print(delta, end="", flush=True)
            print()
            return 0
        completion = client.generate(args.prompt, params)
    print(json.dumps(asdict(completion), ensure_ascii=False, indent=2) if args.json else completion.text)
    return 0


def _stream_reply(client: QwenClient, messages: list[dict[str, Any]], params: GenerationParams) -> str:
    parts = []
    for delta in client.chat(messages, stream=True, params=params):
        print(delta, end="", flush=True)
        parts.append(delta)
    print()
    return "".join(parts)


def _cmd_chat(args: argparse.Namespace) -> int:
    messages: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    params = _params_from(args)
    with _client_from(args) as client:
        if args.message is not None:
            _stream_reply(client, messages + [{"role": "user", "content": args.message}], params)
            return 0
        print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                return 0
            if not line.strip():
                return 0
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": _stream_reply(client, messages, params)})


def _cmd_health(args: argparse.Namespace) -> int:
    with _client_from(args) as client:
        health = client.health()
    print(f"live: {health.live}\nready: {health.ready}\nmodel {args.model} ready: {health.model_ready}")
    return 0 if health.ok else _EXIT_FAILED


def _cmd_models(args: argparse.Namespace) -> int:
    with _client_from(args) as client:
        for model in client.models():
            print(f"{model.name}\t{model.version or '-'}\t{model.state or '-'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import asyncio

    url = args.url or DEFAULT_URLS[args.protocol]
    config = BenchConfig(
        url,
        args.concurrency,
        args.num_requests,
        args.prompt_tokens,
        args.max_tokens,
        args.protocol,
        args.model,
        args.timeout,
        args.seed,
        args.max_token_id,
    )
    result = asyncio.run(arun_bench(config))
    print(result.format_table())
    if args.json:
        with open(args.json, "w") as out:
            out.write(result.to_json() + "\n")
    return 0 if result.completed else _EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InvalidParameterError as error:
        print(f"qwen-client: invalid {error}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except QwenClientError as error:
        print(f"qwen-client: {error}", file=sys.stderr)
        return _EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
