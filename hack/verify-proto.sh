#!/usr/bin/env bash
# Fails when driver/_proto/ does not match what hack/update-proto.sh would generate
# from proto/ (someone edited a .proto, or the generated code, without regenerating).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG_PATH="driver/_proto"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

"${REPO_ROOT}/hack/update-proto.sh" --output-root "${tmp}"

if [[ ! -d "${REPO_ROOT}/${PKG_PATH}" ]]; then
  echo "verify-proto: ${PKG_PATH}/ is missing; run hack/update-proto.sh" >&2
  exit 1
fi

# Bytecode caches are not generated output.
if ! diff -r -u -x __pycache__ "${tmp}/${PKG_PATH}" "${REPO_ROOT}/${PKG_PATH}"; then
  echo >&2
  echo "verify-proto: ${PKG_PATH}/ is stale relative to proto/; run hack/update-proto.sh and commit the result" >&2
  exit 1
fi
echo "verify-proto: ${PKG_PATH}/ is up to date"
