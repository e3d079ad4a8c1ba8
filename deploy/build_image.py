#!/usr/bin/env python3
"""Build the server image from Debian packages and PyPI wheels, with no network inside the build.

Steps (each skipped when its result is already there):
  1. base:       `mmdebstrap --variant=minbase bookworm` with Python and curl into .tools/rootfs/ (kept,
                 named by a hash of its package list), `podman import`ed and tagged by that hash;
  2. wheelhouse: `pip download` of torch (CPU or CUDA build, by variant), deploy/image-requirements.txt,
                 the OpenAI gateway's dependencies and the nvidia-pytriton wheel, into .tools/wheelhouse/;
  3. context:    deploy/Dockerfile, the wheelhouse (hard links), wheels of the engine package and the
                 gateway, the model repository and the entrypoint, staged under .tools/image/;
  4. build:      `podman build --network=none`, tagged localhost/qwen-triton:<version>[-cpu] and
                 labelled with a hash of every input; an image already carrying that hash is reused.

`make image` runs it; the container test (tests/deploy) builds the `cpu` variant through it. It runs as
root (podman and mmdebstrap need it here) and prints the image reference on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / ".tools" / "image"
WHEELHOUSE_ROOT = REPO_ROOT / ".tools" / "wheelhouse"
ROOTFS_CACHE = REPO_ROOT / ".tools" / "rootfs"
IMAGE_REPOSITORY = "localhost/qwen-triton"
IMAGE_VERSION = "0.1.0"  # the chart's appVersion: the chart's default tag
INPUT_HASH_LABEL = "io.qwen-triton.input-hash"

# The base image: what tritonserver, its Python stub (libpython3.11) and the image's health check need.
BASE_PACKAGES = ("python3", "python3-pip", "libpython3.11", "curl", "ca-certificates")
BASE_SUITE = "bookworm"

TORCH_VERSION = "2.13.0"
PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
# The CPU build comes from the index pip is configured with (this project's machines carry it as a
# local wheel); the CUDA build is PyPI's default linux wheel, fetched from PyPI itself.
PIP_SOURCES = {
    "cpu": [],
    "cuda": ["--isolated", "--index-url", "https://pypi.org/simple"],
}
IMAGE_REQUIREMENTS = REPO_ROOT / "deploy" / "image-requirements.txt"
ENGINE_REQUIREMENTS = REPO_ROOT / "requirements" / "engine.txt"
LOCAL_PROJECTS = ("python_backend", "openai_gateway")
# What the image copies from the checkout (besides the wheels built from LOCAL_PROJECTS).
COPIED_SOURCES = ("model_repository", "scripts/serve.py", "deploy/entrypoint.py")


# ---------------------------------------------------------------- small helpers


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("build_image: " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command, check=True, **kwargs)


def podman(*args: str) -> list[str]:
    # crun, podman's default runtime, fails on this kind of machine's cgroups; runc works.
    return ["podman", "--runtime", "runc", *args]


def ulimits() -> list[str]:
    """runc may only lower limits on this kind of machine: open files at the caller's hard limit, processes
    at a value it accepts (podman's own defaults are refused with `error setting rlimits`)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [f"--ulimit=nofile={hard}:{hard}", "--ulimit=nproc=32768:32768"]


def source_files(path: Path) -> list[Path]:
    """The files of a source path that matter to the image (no caches, no build output)."""
    if path.is_file():
        return [path]
    skipped = {"__pycache__", "build", ".pytest_cache"}
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not skipped.intersection(p.relative_to(path).parts) and ".egg-info" not in str(p)
    )


def hash_files(files: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for file in files:
        digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def image_ref(variant: str) -> str:
    return f"{IMAGE_REPOSITORY}:{IMAGE_VERSION}" + ("" if variant == "cuda" else f"-{variant}")


def image_label(ref: str, label: str) -> str | None:
    result = subprocess.run(
        podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', ref),
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


# ---------------------------------------------------------------- 1. base image


def base_image() -> str:
    tag = hashlib.sha256(" ".join((BASE_SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    ref = f"localhost/qwen-triton-base:{BASE_SUITE}-{tag}"
    if subprocess.run(podman("image", "exists", ref)).returncode == 0:
        return ref
    for tool in ("mmdebstrap", "podman"):
        if not shutil.which(tool):
            sys.exit(f"build_image: {tool} is missing; as root: apt-get install -y mmdebstrap podman runc")
    # The rootfs tarball is kept, named by the same hash: podman's storage can be wiped (or the image
    # removed) without a second mmdebstrap run.
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = ROOTFS_CACHE / f"base-{BASE_SUITE}-{tag}.tar"
    if not rootfs.exists():
        partial = rootfs.with_suffix(".partial.tar")
        run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, str(partial)])
        partial.replace(rootfs)
        for stale in ROOTFS_CACHE.glob("base-*.tar"):
            if stale != rootfs:
                stale.unlink()
    run(podman("import", "--change", 'CMD ["/bin/bash"]', str(rootfs), ref), stdout=subprocess.DEVNULL)
    return ref


# ---------------------------------------------------------------- 2. wheelhouse


def wheelhouse(variant: str) -> tuple[Path, str]:
    """Third-party wheels for the variant, downloaded once per change of the list they come from."""
    directory = WHEELHOUSE_ROOT / variant
    requirements = image_requirements()
    stamp_value = hashlib.sha256(f"{requirements} {PYTRITON_REQUIREMENT} {PIP_SOURCES[variant]}".encode()).hexdigest()[
        :16
    ]
    stamp = directory / ".inputs-hash"
    if stamp.exists() and stamp.read_text() == stamp_value:
        return directory, stamp_value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "requirements.txt").write_text(requirements)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(directory), *PIP_SOURCES[variant]]
    run([*pip, "-r", str(directory / "requirements.txt")])
    run([*pip, "--no-deps", PYTRITON_REQUIREMENT])
    stamp.write_text(stamp_value)
    return directory, stamp_value


def image_requirements() -> str:
    """What the image installs from the wheelhouse: the pinned torch, the engine's runtime list
    (requirements/engine.txt and the package's declared dependencies), the image's own additions and
    the OpenAI gateway's dependencies."""
    lines = [f"torch=={TORCH_VERSION}", ENGINE_REQUIREMENTS.read_text(), IMAGE_REQUIREMENTS.read_text()]
    for project in LOCAL_PROJECTS:
        manifest = REPO_ROOT / project / "pyproject.toml"
        if manifest.exists():
            lines += project_dependencies(manifest)
    return "\n".join([*lines, ""])


def project_dependencies(manifest: Path) -> list[str]:
    import tomllib

    return tomllib.loads(manifest.read_text())["project"]["dependencies"]


# ---------------------------------------------------------------- 3. context and 4. build


def sources_hash() -> str:
    """This repository's files that the image holds."""
    paths = []
    for name in (*LOCAL_PROJECTS, *COPIED_SOURCES):
        if (REPO_ROOT / name).exists():
            paths += source_files(REPO_ROOT / name)
    return hash_files(paths)


def inputs_hash(variant: str, base: str, wheels_hash: str, sources: str) -> str:
    recipe = [REPO_ROOT / "deploy" / "Dockerfile", Path(__file__).resolve()]
    return hash_files(recipe, extra=f"{variant} {base} {wheels_hash} {sources}")


def stage_context(variant: str, wheels: Path) -> Path:
    context = WORK_DIR / f"context-{variant}"
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheelhouse").mkdir(parents=True)
    (context / "local-wheels").mkdir()
    for wheel in [*wheels.glob("*.whl"), wheels / "requirements.txt"]:
        os.link(wheel, context / "wheelhouse" / wheel.name)
    for name in LOCAL_PROJECTS:
        if (REPO_ROOT / name).exists():
            build_local_wheel(REPO_ROOT / name, context)
    shutil.copy2(REPO_ROOT / "deploy" / "Dockerfile", context / "Dockerfile")
    for name in COPIED_SOURCES:
        source, target = REPO_ROOT / name, context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    return context


def build_local_wheel(project: Path, context: Path) -> None:
    """A wheel of one of this repo's packages, built from a copy so the shared checkout stays untouched."""
    copy = context / "src" / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            "local-wheels",
            str(copy),
        ],
        cwd=context,
    )
    shutil.rmtree(copy)


def build(variant: str, force: bool) -> str:
    ref = image_ref(variant)
    base = base_image()
    wheels, wheels_hash = wheelhouse(variant)
    sources = sources_hash()
    key = inputs_hash(variant, base, wheels_hash, sources)
    if not force and image_label(ref, INPUT_HASH_LABEL) == key:
        print(f"build_image: {ref} is up to date (inputs {key})", file=sys.stderr)
        return ref
    context = stage_context(variant, wheels)
    run(
        podman(
            "build",
            "--network=none",
            *ulimits(),
            f"--build-arg=BASE_IMAGE={base}",
            f"--build-arg=WHEELHOUSE_HASH={wheels_hash}",
            f"--build-arg=SOURCES_HASH={sources}",
            f"--label={INPUT_HASH_LABEL}={key}",
            "--tag",
            ref,
            str(context),
        )
    )
    shutil.rmtree(context, ignore_errors=True)
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(PIP_SOURCES), default="cuda", help="torch build (default: cuda)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs did not change")
    args = parser.parse_args(argv)
    print(build(args.variant, args.force), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
