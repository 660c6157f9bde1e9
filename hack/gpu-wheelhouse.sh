#!/usr/bin/env bash
# Build the wheelhouse hack/gpu-validate.sh installs on a GPU machine that cannot reach a package index.
#
#   hack/gpu-wheelhouse.sh [PYTHON_VERSION ...]      default: 3.12 (python3 of the GPU machine's image)
#
# Run it where PyPI is reachable. For each Python version it downloads, into build/gpu-wheelhouse/cpXY/,
# binary wheels for manylinux x86_64 of everything the project and its tests import: the runtime
# dependencies from pyproject.toml plus pytest, pytest-asyncio and hypothesis. The project itself is not
# packaged: the GPU machine runs the carried working tree. Versions are pinned to this checkout's .venv
# (pip freeze) so the GPU run uses what CI uses; PINS=0 lets pip pick the newest instead (use it when a pinned
# version has no wheel for the target Python).
#
# build/ is git-ignored; copy the folder to the GPU machine with the working tree. The size is printed at the
# end: keep the tree and wheelhouse small (well under 64 MiB) so the copy is quick.
set -euo pipefail

cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.12)
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
out=build/gpu-wheelhouse
mkdir -p "$out"

requirements=$(mktemp)
constraints=$(mktemp)
trap 'rm -f "$requirements" "$constraints"' EXIT

# Runtime dependencies, straight from pyproject.toml, plus what the test run needs.
"$python" - "$requirements" <<'EOF'
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
with open(sys.argv[1], "w") as out:
    out.write("\n".join([*deps, "pytest", "pytest-asyncio", "hypothesis"]) + "\n")
EOF

if [ "${PINS:-1}" != 0 ]; then
    # Editable and VCS lines name this project or local paths: not something to download.
    "$python" -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' >"$constraints" || true
fi

platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done

for version in "${versions[@]}"; do
    tag="cp${version/./}"
    dir="$out/$tag"
    rm -rf "$dir"
    echo "== wheels for CPython $version ($tag) -> $dir"
    "$python" -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$version" \
        "${platforms[@]}" --dest "$dir" -r "$requirements" -c "$constraints"
    # Two versions of one project would make the --no-deps install ambiguous.
    dupes=$(ls "$dir" | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
    if [ -n "$dupes" ]; then
        echo "more than one version of: $dupes" >&2
        exit 1
    fi
    echo "$version" >"$dir/PYTHON_VERSION"
    echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
done
du -sh "$out"
