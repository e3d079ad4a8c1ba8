#!/usr/bin/env python3
"""Container entrypoint: render the model repository's engine settings, then run and supervise tritonserver.

The image's model repository is read-only (read-only root filesystem). This copies it to a scratch
volume, writes `--model` and each `--param key=value` into the copy's config.pbtxt `parameters`
(the same rendering scripts/serve.py does for `make serve`), sets the Triton model's instance_group
(kind and count), and starts tritonserver as its child under scripts/serve.py's supervision
(`serve.supervise`, the code `make serve` runs). This process stays PID 1 and gets the kubelet's SIGTERM:
  - readiness (GET /ready on --health-port, the chart's readiness probe) drops at once, new requests are
    refused with a retryable error (HTTP 503/400 with "retry after", gRPC UNAVAILABLE), the admitted ones,
    queued ones included, finish; once none is left, or after --drain-timeout, tritonserver gets SIGTERM
    and has --exit-timeout-secs to close its connections;
  - a dead or frozen engine (stub killed, engine thread stalled) makes /ready answer 503 and the process
    kill tritonserver and exit 3, so the kubelet restarts the container.

The admin surface is closed by default: shared-memory, logging, trace and statistics answer only
requests with the admin header, whose value comes from --admin-key-file (a mounted Secret) or, without
one, is a random key nobody knows. tritonserver 2.51 reads that value only from its argv, so it is in
tritonserver's /proc/<pid>/cmdline inside this container (same user, who can read the key file anyway,
and `ps` in the container shows it); it is never in the pod spec, never in an environment variable,
never printed (this script logs the command with the value masked).

Usage (the Helm chart writes these arguments):
  entrypoint.py --source-repository /opt/qwen/model_repository --run-dir /run/qwen \
      --model-name qwen --model Qwen/Qwen2.5-7B-Instruct --param dtype=bfloat16 ... \
      --instance-kind gpu --instance-count 1 --tritonserver /opt/tritonserver/bin/tritonserver \
      --admin-key-file /var/run/secrets/qwen-triton/admin/key --health-port 8003 --drain-timeout 120 \
      -- <tritonserver flags>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# In the image this file is /opt/qwen/deploy/entrypoint.py and the launcher /opt/qwen/scripts/serve.py,
# as in the repository: reuse its config.pbtxt rendering instead of keeping a second copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import serve  # noqa: E402


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, server_flags = split_at_double_dash(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    image_repository = os.environ.get("QWEN_MODEL_REPOSITORY")  # set by deploy/Dockerfile
    parser.add_argument(
        "--source-repository",
        type=Path,
        default=image_repository,
        required=not image_repository,
        help="the image's model repository (default: $QWEN_MODEL_REPOSITORY)",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="writable scratch for the rendered copy")
    parser.add_argument("--model-name", default="qwen", help="the Triton model whose instance_group is set")
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id (the `model` parameter)")
    parser.add_argument("--param", action="append", type=serve.parse_param, default=[], metavar="KEY=VALUE")
    parser.add_argument("--instance-kind", choices=["cpu", "gpu"], default="gpu")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--tritonserver", default="/opt/tritonserver/bin/tritonserver")
    parser.add_argument(
        "--address",
        default="0.0.0.0",
        help="address HTTP, gRPC and metrics bind to (default: every interface of the container's network)",
    )
    # The restricted APIs, the admin header and its key file work as in `make serve` (scripts/serve.py).
    serve.add_admin_arguments(parser)
    parser.add_argument(
        "--health-port",
        type=int,
        default=8003,
        help="port of the supervisor's GET /ready and /live, the chart's probes (default: %(default)s; 0 = off)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="on SIGTERM, seconds the admitted requests get to finish before tritonserver is stopped "
        "(the chart's triton.drainTimeoutSeconds; default: %(default)s)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=24 * 3600.0,
        help="seconds to wait for tritonserver's readiness before giving up (the startup probe decides first)",
    )
    parser.add_argument("--dry-run", action="store_true", help="render, print the command as JSON, do not start")
    args = parser.parse_args(own)
    if args.instance_count < 1:
        parser.error(f"--instance-count must be >= 1, got {args.instance_count} (gpu.instancesPerPod in the chart)")
    return args, server_flags


def split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def set_instance_count(repository: Path, model_name: str, count: int) -> None:
    """Several engines in one pod (Triton instance_group count); each gets its own KV budget."""
    config_path = repository / model_name / "config.pbtxt"
    if not config_path.exists():
        sys.exit(f"entrypoint: no {config_path}; --model-name must name a model of {repository}")
    config = serve.load_config(config_path)
    if not config.instance_group:
        config.instance_group.add()
    for group in config.instance_group:
        group.count = count
    serve.save_config(config, config_path)


def render_repository(args: argparse.Namespace) -> Path:
    destination = args.run_dir / "model_repository"
    # The scratch volume outlives a container restart within the pod: start from a clean copy.
    shutil.rmtree(destination, ignore_errors=True)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    overrides = {serve.CHECKPOINT_PARAM: args.model, **dict(args.param)}
    serve.prepare_model_repository(args.source_repository, destination, overrides, args.instance_kind)
    set_instance_count(destination, args.model_name, args.instance_count)
    return destination


def http_port(server_flags: list[str]) -> int:
    """tritonserver's HTTP port, as its flags set it (the supervisor probes it there)."""
    port = 8000
    for flag in server_flags:
        if flag.startswith("--http-port="):
            port = int(flag.partition("=")[2])
    return port


def main(argv: list[str] | None = None) -> int:
    args, server_flags = parse_args(sys.argv[1:] if argv is None else argv)
    repository = render_repository(args)
    command = [
        args.tritonserver,
        f"--model-repository={repository}",
        *serve.bind_flags(args.address),
        *server_flags,
        *serve.admin_flags(args),
    ]
    if args.dry_run:
        print(json.dumps({"command": serve.redact(command), "repository": str(repository)}))
        return 0
    # The admin key is in `command` (tritonserver 2.51 reads it only from argv): log the redacted form only.
    print("entrypoint: " + " ".join(serve.redact(command)), flush=True)
    return serve.supervise(
        command,
        dict(os.environ),
        args.run_dir / "control",
        server_url=f"http://{serve.probe_host(args.address)}:{http_port(server_flags)}",
        ready_timeout=args.ready_timeout,
        drain_timeout=args.drain_timeout,
        health=(args.address, args.health_port) if args.health_port else None,
        on_ready=lambda process: print(f"entrypoint: READY pid={process.pid}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
