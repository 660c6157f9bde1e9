#!/usr/bin/env bash
# Regenerates deploy/base (the kustomize base) from the Helm chart's default render.
# Needs the "chart" extra (helm-python-sdk): pip install -e '.[chart]'.
# tests/unit/deploy/test_kustomize.py fails when deploy/base is out of date with the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m tests.support.chart write-base deploy/base
