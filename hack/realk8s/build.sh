#!/usr/bin/env bash
# Build the real-cluster test tier's Kubernetes components (docs/testing.md) from the Go module proxy, once
# per version and source: the binary is cached under $REALK8S_CACHE keyed by the Kubernetes version and a
# hash of this module, the Go toolchain and the platform, so a warm run costs a hash.
#
#   hack/realk8s/build.sh            build if needed; print the binary's path
#   hack/realk8s/build.sh --locate   print the cached binary's path, or exit 1 (never builds)
#
# KUBE_VERSION picks the release (default: the one go.mod pins). Each supported minor has its own module
# file here: go.mod (1.37), go-1.36.mod (1.36, built with the k8s136 tag for the kubelet signatures that
# changed in 1.37).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

# The k8s.io/kubernetes release a module file requires.
pinned() { sed -n 's/^\(require\)\{0,1\}[[:space:]]*k8s\.io\/kubernetes \(v[0-9][0-9.]*\)$/\2/p' "$1"; }

version="${KUBE_VERSION:-$(pinned go.mod)}"
modfile="" tags=""
for candidate in go.mod go-*.mod; do
  if [ -f "$candidate" ] && [ "$(pinned "$candidate")" = "$version" ]; then
    modfile="$candidate"
  fi
done
if [ -z "$modfile" ]; then
  echo "build.sh: no module file pins k8s.io/kubernetes $version; pinned:" \
    "$(for f in go.mod go-*.mod; do pinned "$f"; done | tr '\n' ' ')" >&2
  exit 2
fi
case "$version" in v1.36.*) tags="k8s136" ;; esac

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed (the tier needs Go >= 1.26 and the Go module proxy)" >&2
  exit 3
fi
goversion="$(go env GOVERSION GOOS GOARCH | tr '\n' ' ')"
key="$({
  echo "$version $tags $goversion"
  cat "$modfile" "${modfile%.mod}.sum" build.sh ./*.go
} | sha256sum | cut -c1-16)"
cache="${REALK8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/accel-dra/realk8s}"
binary="$cache/$version-$key/realk8s"

if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
if [ "${1:-}" = "--locate" ]; then
  exit 1
fi

minor="${version#v1.}"
minor="${minor%%.*}"
pkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in "$pkg" "$cpkg"; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
echo "build.sh: building Kubernetes $version components with $goversion into $binary" >&2
start=$SECONDS
mkdir -p "$(dirname "$binary")"
tmp="$(mktemp "$binary.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
go build -modfile="$modfile" ${tags:+-tags "$tags"} -trimpath -ldflags "$ldflags" -o "$tmp" .
mv "$tmp" "$binary"
echo "build.sh: built in $((SECONDS - start)) s" >&2
# Each source change adds a ~150 MB binary: keep the newest few (other checkouts may use them).
ls -1dt "$cache"/*/ 2>/dev/null | tail -n +5 | xargs -r rm -rf
echo "$binary"
