#!/usr/bin/env bash
# System packages the test suite uses beyond the Python venv: Prometheus and promtool (Debian package
# `prometheus`) for the exporter's metrics, PromQL and dashboard tests. Idempotent: a no-op when both are
# installed. Installs with apt-get as root, or through sudo when it needs no password; otherwise it says so
# and those tests skip, naming the package. TEST_DEPS_REQUIRED=1 (CI) makes a failed install an error.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

give_up() {
  echo "test dependencies: $1; the Prometheus and promtool tests will be skipped" >&2
  if [ "${TEST_DEPS_REQUIRED:-0}" = 1 ]; then
    exit 1
  fi
  exit 0
}

command -v apt-get >/dev/null 2>&1 || give_up "no apt-get here (install the 'prometheus' package yourself)"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  give_up "not root and no password-less sudo (run: sudo apt-get install prometheus)"
fi

echo "test dependencies: installing the Debian package 'prometheus' (promtool, prometheus)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq || give_up "apt-get update failed"
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
  give_up "apt-get install prometheus failed"
