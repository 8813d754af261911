#!/usr/bin/env bash
# GPU check: bash benchmarks/gpu_check.sh --out runs/gpu [--dry-run]  (see benchmarks/gpu_check.py, docs/bench.md)
# PYTHON picks the interpreter (default: python on PATH, e.g. an activated venv with effv2 installed).
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
