#!/usr/bin/env bash
# Installs genai-perf (NVIDIA's LLM profiler for Triton) from PyPI into its own virtualenv
# .tools/genai-perf-venv: it pins numpy, pandas, pydantic and friends that would fight the engine's
# virtualenv. The perf_analyzer binary it drives is the one the tritonclient wheel puts in the engine's
# virtualenv (.venv/bin; PyPI's perf-analyzer is an empty placeholder); it links libb64 (Debian libb64-0d,
# installed here when root) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel, into the tool venv,
# even on machines without a GPU). Writes .tools/genai-perf-venv/bin/genai-perf-run, which runs genai-perf
# with that PATH and LD_LIBRARY_PATH (and refuses a warm-up perf_analyzer 2.51 never ends), and prints its
# path on stdout. Idempotent.
set -euo pipefail

GENAI_PERF_VERSION="${GENAI_PERF_VERSION:-0.0.16}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.tools/genai-perf-venv"
runner="$venv/bin/genai-perf-run"

installed_version() {
  "$venv/bin/pip" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}

install_packages() {
  echo "install_genai_perf: installing genai-perf $GENAI_PERF_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "genai-perf==$GENAI_PERF_VERSION" nvidia-cuda-runtime-cu12 \
    2> >(grep -v '^WARNING: Location' >&2)
}

install_libb64() {
  ldconfig -p | grep -q 'libb64\.so\.0d' && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install_genai_perf: perf_analyzer needs libb64.so.0d: apt-get install -y libb64-0d (as root)" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null; }
}

write_runner() {
  local cudart
  cudart="$(dirname "$(find "$venv" -name 'libcudart.so.12*' | head -1)")"
  {
    echo '#!/usr/bin/env bash'
    echo '# genai-perf with the engine virtualenv'"'"'s perf_analyzer (written by scripts/install_genai_perf.sh).'
    printf 'export PATH=%q"${PATH:+:$PATH}"\n' "$repo_root/.venv/bin"
    printf 'export LD_LIBRARY_PATH=%q"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n' "$cudart"
    cat <<'GUARD'
# perf_analyzer 2.51 (the tritonclient wheel's) never ends a warm-up of fewer requests than the concurrency:
# it keeps every slot busy and sends requests until killed. Later perf_analyzer releases clamp the warm-up
# concurrency; with this one, refuse the combination instead of hanging.
warmup=0 concurrency=1 previous=""
for arg in "$@"; do
  case "$previous" in --warmup-request-count | --num-warmup-requests) warmup="$arg" ;; --concurrency) concurrency="$arg" ;; esac
  case "$arg" in --warmup-request-count=* | --num-warmup-requests=*) warmup="${arg#*=}" ;; --concurrency=*) concurrency="${arg#*=}" ;; esac
  previous="$arg"
done
if [[ "$warmup" =~ ^[0-9]+$ && "$concurrency" =~ ^[0-9]+$ ]] && ((warmup > 0 && warmup < concurrency)); then
  echo "genai-perf-run: --warmup-request-count $warmup below --concurrency $concurrency: perf_analyzer 2.51's warm-up never ends; use 0 or >= $concurrency" >&2
  exit 2
fi
GUARD
    printf 'exec %q "$@"\n' "$venv/bin/genai-perf"
  } >"$runner"
  chmod +x "$runner"
}

if [[ "$(installed_version genai-perf)" != "$GENAI_PERF_VERSION" || -z "$(installed_version nvidia-cuda-runtime-cu12)" ]]; then
  install_packages
fi
install_libb64
write_runner
echo "$runner"
