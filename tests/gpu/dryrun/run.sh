#!/usr/bin/env bash
# Dry run of the gpu test set on a machine without a GPU:  tests/gpu/dryrun/run.sh [PROFILE] [PYTEST ARGS...]
#
# Every process of the run sees the fake profile PROFILE (default dgx-h100; see driver/devices/profiles)
# through the real NVML backend code (sitecustomize.py swaps pynvml for the unit tests' stand-in), a fake
# nvidia-smi that prints the same profile (fake_smi.py), fake /dev/nvidia* nodes and driver libraries under a
# temporary driver root, and a fake CUDA load (fake_load.py). It checks the test set's plumbing -- parsers,
# comparisons, processes, the CDI host checks -- before a GPU session spends device time on it; it says
# nothing about the driver on real hardware. Needs root (mknod). ADRA_DRY_MUTATE=memory|driver|cuda|links|numa|minor
# makes the fake nvidia-smi disagree, and the matching test must then fail.
set -euo pipefail

cd "$(dirname "$0")/../../.."
repo=$PWD
here=$repo/tests/gpu/dryrun
profile=${1:-dgx-h100}
[ $# -gt 0 ] && shift
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d /tmp/adra-dry.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/root/dev" "$work/root/usr/lib64"

printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$python" "$here/fake_smi.py" >"$work/bin/nvidia-smi"
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$python" "$here/fake_load.py" >"$work/bin/load-python"
chmod +x "$work/bin/nvidia-smi" "$work/bin/load-python"

# Device nodes with the profile's minor numbers, and the libraries the CDI check requires.
minors=$(PYTHONPATH=$repo "$python" -c "
from driver.devices.fake import load_named_profile
print(' '.join(str(g.minor) for g in load_named_profile('$profile', node_name='dry').inventory.gpus))")
for minor in $minors; do mknod "$work/root/dev/nvidia$minor" c 195 "$minor"; done
mknod "$work/root/dev/nvidiactl" c 195 255
mknod "$work/root/dev/nvidia-uvm" c 511 0
for lib in libcuda libnvidia-ml; do
    echo "dry run" >"$work/root/usr/lib64/$lib.so.580.65.06"
    ln -s "$lib.so.580.65.06" "$work/root/usr/lib64/$lib.so.1"
done

ADRA_DRY_PROFILE=$profile ADRA_DRY_BUSY=$work/busy ADRA_DRY_STATE=$work/state PATH=$work/bin:$PATH PYTHONPATH=$here:$repo \
    ACCEL_DRA_GPU_DRIVER_ROOT=$work/root ACCEL_DRA_GPU_LOAD_PYTHON=$work/bin/load-python \
    "$python" -m pytest -p no:cacheprovider -m gpu tests/gpu "$@"
