#!/usr/bin/env bash
# Validate the driver on real NVIDIA GPUs (issue 11): the gpu test set plus a record of the machine.
#
# Where a package index is reachable (this checkout), first build the wheelhouse for the GPU machine's Python:
#     hack/gpu-wheelhouse.sh 3.12
# Then, on a machine with an NVIDIA H100/H200 GPU and a copy of the tree with build/gpu-wheelhouse:
#     bash hack/gpu-validate.sh
# On any other NVIDIA machine:  OUT=out/gpu-validation hack/gpu-validate.sh
#
# Environment: PYTHON (default python3: on the GPU machine's image the interpreter that has PyTorch), OUT (default
# out/gpu-validation), SITE_DIR (where the wheels are installed, default /tmp/accel-dra-site).
#
# Writes to $OUT, flat, 8 small files (easy to copy back from a machine without network):
#   summary.md           what ran, device, driver/CUDA versions, test outcomes, NVML calls unsupported
#   environment.txt      OS, Python, wheelhouse, nvcc/PyTorch, where the driver libraries and nodes are
#   nvidia-smi.txt       nvidia-smi, -q, --query-gpu, topo -m, nvlink -s
#   discover.yaml        the ResourceSlices accel-dra discover prints for this machine
#   nvml-report.json     NVML calls unsupported / failed during discovery and telemetry (python -m tests.gpu.nvml_report)
#   pytest.log           output of both pytest runs
#   junit.xml            pytest -m gpu -v
#   junit-cuda-load.xml  the exporter test again with the nvcc-built load (only where nvcc exists)
#
# Every step runs even when an earlier one fails; each exit status is in the summary. Nothing here changes a
# GPU setting (clocks, power, compute mode, MIG): the tests only read and run an ordinary CUDA load.
set -uo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
OUT=${OUT:-$repo/out/gpu-validation}
mkdir -p "$OUT"
python=${PYTHON:-python3}
site=${SITE_DIR:-/tmp/accel-dra-site}
status_file=$(mktemp)
trap 'rm -f "$status_file"' EXIT

record() { echo "$1|$2" >>"$status_file"; }
# step NAME COMMAND...: run it, note its exit status under NAME.
step() {
    local name=$1 rc
    shift
    echo "== $name" >&2
    "$@"
    rc=$?
    record "$name" "$rc"
    return "$rc"
}

# -- Python and the wheelhouse ---------------------------------------------------------------------------
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || {
    echo "no usable Python at $python" >&2
    exit 2
}
tag="cp${pyver/./}"
wheels=$repo/build/gpu-wheelhouse/$tag
echo "Python $pyver ($("$python" -c 'import sys; print(sys.executable)')), wheelhouse $wheels" >&2

install_wheels() {
    if [ ! -d "$wheels" ]; then
        echo "no wheelhouse for $tag: found [$(ls "$repo/build/gpu-wheelhouse" 2>/dev/null | tr '\n' ' ')];" \
            "build it with: hack/gpu-wheelhouse.sh $pyver" >&2
        return 3
    fi
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl
}
step "install wheels ($tag)" install_wheels
# The working tree first (the code under test), then the carried wheels, then the image's own packages.
export PYTHONPATH="$repo:$site"
export PYTHONUNBUFFERED=1
# The image's own pytest plugins may not fit the carried pytest: load only what the suite needs.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# The CUDA load runs with this interpreter and no PYTHONPATH, so it sees the image's PyTorch unshadowed.
export ACCEL_DRA_GPU_LOAD_PYTHON=${ACCEL_DRA_GPU_LOAD_PYTHON:-$python}
step "imports" "$python" -c 'import driver.cli, driver.plugin.app, driver.exporter.server, driver.sim.apiserver, pytest, pytest_asyncio'

# -- the machine ---------------------------------------------------------------------------------------
environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -srm)"
    grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null
    echo "python: $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    echo "wheelhouse: $wheels ($(ls "$wheels"/*.whl 2>/dev/null | wc -l) wheels)"
    echo "PATH=$PATH"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "--- /proc/driver/nvidia/version"
    cat /proc/driver/nvidia/version 2>&1
    echo "--- nvidia-smi --version"
    nvidia-smi --version 2>&1
    echo "--- nvcc --version"
    nvcc --version 2>&1 | tail -n 2
    echo "--- PyTorch (${ACCEL_DRA_GPU_LOAD_PYTHON}, no PYTHONPATH)"
    PYTHONPATH='' "$ACCEL_DRA_GPU_LOAD_PYTHON" -c \
        'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -n 1
    echo "--- device nodes"
    ls -l /dev/nvidia* /dev/nvidia-caps 2>&1
    echo "--- driver libraries known to the loader (ldconfig -p)"
    ldconfig -p 2>/dev/null | grep -E 'lib(nvidia-ml|cuda)\.so' || echo "(none)"
    echo "--- driver libraries on disk"
    find /usr /lib /lib64 /opt /run/nvidia -name 'libnvidia-ml.so*' -o -name 'libcuda.so*' 2>/dev/null | head -n 20
    echo "--- NVML as loaded by this Python"
    "$python" -c 'import pynvml; pynvml.nvmlInit(); print(open("/proc/self/maps").read())' 2>&1 |
        grep -oE '/[^ ]*libnvidia-ml[^ ]*' | sort -u
    echo "--- carried packages"
    ls "$site" 2>/dev/null | grep -E '\.dist-info$' | sed 's/\.dist-info$//'
}
step "environment" environment >"$OUT/environment.txt" 2>&1

smi_record() {
    local query=index,uuid,name,memory.total,pci.bus_id,driver_version,compute_cap,mig.mode.current
    for args in "" "-q" "--query-gpu=$query --format=csv" "topo -m" "nvlink -s"; do
        echo "=== nvidia-smi $args"
        # shellcheck disable=SC2086  # the arguments are meant to split
        nvidia-smi $args 2>&1
        echo "(exit $?)"
    done
}
step "nvidia-smi" smi_record >"$OUT/nvidia-smi.txt" 2>&1
step "accel-dra discover" "$python" -m driver discover --backend nvml --node-name gpu-validation \
    >"$OUT/discover.yaml" 2>&1
step "nvml report" "$python" -m tests.gpu.nvml_report --out "$OUT/nvml-report.json" >/dev/null

# -- the gpu test set ----------------------------------------------------------------------------------
pytest_args=(-p pytest_asyncio.plugin -p no:cacheprovider -v -rA)
# The whole run is kept under 600 s: the main run gets what is left of 560 s, the second run only
# starts with 150 s to spare.
budget() { echo $((560 - SECONDS)); }
left=$(budget)
step "pytest -m gpu" timeout "$left" "$python" -m pytest -m gpu "${pytest_args[@]}" \
    --junitxml="$OUT/junit.xml" tests/gpu 2>&1 | tee "$OUT/pytest.log"
if ! command -v nvcc >/dev/null; then
    record "pytest exporter with the nvcc load" "not run: nvcc not on PATH"
elif left=$(budget) && [ "$left" -lt 150 ]; then
    record "pytest exporter with the nvcc load" "not run: less than 150 s of the time limit left"
else
    step "pytest exporter with the nvcc load" env ACCEL_DRA_GPU_LOAD=cuda timeout "$left" "$python" -m pytest \
        -m gpu "${pytest_args[@]}" --junitxml="$OUT/junit-cuda-load.xml" tests/gpu/test_exporter_load.py 2>&1 |
        tee -a "$OUT/pytest.log"
fi

# -- summary (standard library only: it must work even when the wheels did not install) ---------------
PYTHONPATH='' "$python" tests/gpu/summary.py "$OUT" "$tag" "$status_file"
