#!/usr/bin/env bash
# Builds the cp312 CUDA wheel for the device machine here on the CPU machine (nvcc, sm_90a), into .devwheel/,
# so benchmarks/device_run.sh installs it instead of spending device minutes on a build. Carry ".devwheel".
#   bash benchmarks/build_device_wheel.sh [python3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PY312="${1:-/work/venv312/bin/python}"  # a Python 3.12 with scikit-build-core and nanobind (the device's)
rm -rf .devwheel && mkdir -p .devwheel
"$PY312" -m pip wheel --no-build-isolation --no-deps . -w .devwheel -q -Cbuild-dir=build/wheel312 \
  -Ccmake.define.GPT_OSS_NATIVE_CUDA=ON -Ccmake.define.GPT_OSS_NATIVE_MARCH_NATIVE=OFF
ls -la .devwheel
