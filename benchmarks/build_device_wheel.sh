#!/usr/bin/env bash
# Builds the cp312 CUDA wheel for the device machine here on the CPU machine (nvcc, sm_90a), into .devwheel/,
# so benchmarks/device_run.sh installs it instead of spending device minutes on a build. Carry ".devwheel".
# Each NAME=PATCH argument also builds HEAD + that patch into .devwheel/NAME/, for `device_run.sh ab`, which
# times every variant against the baseline in one device call; NAME=PATCH1,PATCH2 stacks patches, in that order.
# The argument `timeline` builds the working tree with the per-CTA timeline compiled in
# (-DGPT_OSS_NATIVE_TIMELINE=ON) into .devwheel/timeline/main/, and `timeline:NAME=PATCH` builds HEAD + that patch
# so into .devwheel/timeline/NAME/, for `device_run.sh timeline`.
#   bash benchmarks/build_device_wheel.sh [NAME=PATCH[,PATCH...] ...] [timeline] [timeline:NAME=PATCH ...]
# PY312 (default /work/venv312/bin/python): a Python 3.12 with scikit-build-core and nanobind, as on the device.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY312="${PY312:-/work/venv312/bin/python}"

build() {  # SOURCE_DIR OUT_DIR BUILD_DIR [TIMELINE=OFF]
  "$PY312" -m pip wheel --no-build-isolation --no-deps "$1" -w "$2" -q -Cbuild-dir="$3" \
    -Ccmake.define.GPT_OSS_NATIVE_CUDA=ON -Ccmake.define.GPT_OSS_NATIVE_MARCH_NATIVE=OFF \
    -Ccmake.define.GPT_OSS_NATIVE_TIMELINE="${4:-OFF}"
}

rm -rf .devwheel && mkdir -p .devwheel
build "$ROOT" .devwheel build/wheel312
for spec in "$@"; do
  if [ "$spec" = timeline ]; then build "$ROOT" .devwheel/timeline/main build/wheel312-timeline ON; continue; fi
  timeline=OFF
  if [[ "$spec" == timeline:* ]]; then spec="${spec#timeline:}" timeline=ON; fi
  name="${spec%%=*}"
  IFS=, read -r -a patches <<< "${spec#*=}"
  [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$name" != main && "$name" != probes && ${#patches[@]} -gt 0 ]] \
    || { echo "want NAME=PATCH[,PATCH...] (NAME not main or probes), got '$spec'" >&2; exit 2; }
  for patch in "${patches[@]}"; do [ -f "$patch" ] || { echo "no patch file '$patch' in '$spec'" >&2; exit 2; }; done
  tree="$(mktemp -d)/$name"
  git worktree add -q --detach "$tree" HEAD
  for patch in "${patches[@]}"; do
    git -C "$tree" apply "$ROOT/$patch" || { git worktree remove --force "$tree"; echo "$patch does not apply" >&2; exit 1; }
  done
  if [ "$timeline" = ON ]; then
    build "$tree" ".devwheel/timeline/$name" "build/wheel312-timeline-$name" ON
  else
    build "$tree" ".devwheel/$name" "build/wheel312-$name"
    # The variant's own tests and benchmarks (a patch may add or change them): device_run.sh ab runs these.
    mkdir -p ".devwheel/$name/tree" && cp -r "$tree/tests" "$tree/benchmarks" "$tree/pyproject.toml" ".devwheel/$name/tree/"
  fi
  git worktree remove --force "$tree"
done
# The standalone probes (each file's header says what it asks and what it answered): `AB_PROBES="NAME ..."
# bash benchmarks/device_run.sh ab` runs those first.
mkdir -p .devwheel/probes
for probe in latency_under_load pdl_wake tlb_reach; do
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc "benchmarks/$probe.cu" -o ".devwheel/probes/$probe"
done
ls -laR .devwheel
