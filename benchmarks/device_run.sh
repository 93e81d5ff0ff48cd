#!/usr/bin/env bash
# The one script to run on a GPU machine: build, CUDA tests, decode and prefill benchmarks, per-kernel profile.
#   bash benchmarks/device_run.sh [quick|full|tests|bench|bench-full|ab|timeline]
# tests: CUDA tests only (the decode end-to-end tests twice: with the per-token prefill replay, which isolates
#   the decode kernels, and with the default batched prefill; ~2 min). quick: tests, then 20b at contexts 1k and
#   8k and 120b at 1k; full: tests, then each model at 1k, 8k and 32k. bench / bench-full: the quick / full
#   benchmarks without the tests. Every benchmark mode also times the batched prefill against the per-token
#   replay (20b, prompts of 128 / 1024 / 4096) and ends with an ncu profile of one decode step (2-layer
#   20b-shaped model). `full` takes more than the device tool's 10 minutes a call: run `tests`, then
#   `bench-full`. ab: decode of AB_MODELS (default 20b) at AB_CONTEXTS (default 1024) and the graph-timed weight kernels for the
#   baseline wheel and every variant in .devwheel/NAME/ (build_device_wheel.sh NAME=PATCH), plus, with
#   AB_SWEEP=1, the baseline's fixed-cost sweep (bench_kernels_weights --sweep). It starts with the
#   standalone probes named in AB_PROBES (e.g. "pdl_wake tlb_reach latency_under_load"; none by default); AB_TESTS="FILES" runs those test files against
#   each variant (not the baseline: `tests` mode covers main; AB_TESTS_baseline="FILES" runs those on it); AB_VARIANTS="NAME ..." picks some of the variants;
#   AB_TESTS_NAME="FILES" replaces AB_TESTS for variant NAME; AB_ENV_NAME="VAR=VALUE ..." sets those environment
#   variables for variant NAME's tests and benchmarks (e.g. a switch the variant adds). timeline: benchmarks/timeline.py (TIMELINE_MODELS, default 20b,
#   at TIMELINE_CONTEXTS, default 1k and 8k) with each profiling wheel of `build_device_wheel.sh timeline
#   timeline:NAME=PATCH` (main and the variants). Weights are built in host memory (decode.py --source memory); DECODE_SOURCE=disk writes the
#   20b checkpoint with write_random_checkpoint and loads it with load_checkpoint (~13 GB of disk, a minute more).
# A cp312 wheel in .devwheel/ (built on the CPU machine: bash benchmarks/build_device_wheel.sh) is installed
# instead of building here, which saves the device minutes of a build.
# Logs go to $OUT (the device tool's output folder; /tmp/gpt_oss_device_out elsewhere), packed on exit into one
# logs_MODE_TIME.tar.gz. Wheels in .whl/
# (pure-Python test dependencies the device image lacks, e.g. the gpt-oss reference) are installed first.
set -uo pipefail
MODE="${1:-quick}"
OUT="${OUT:-/tmp/gpt_oss_device_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=python3

stage() { echo; echo "=== $* ($(date -u +%T))"; }
# The device tool brings back at most 8 files from $OUT: on exit this run's loose logs go into one tarball
# (logs_MODE_TIME.tar.gz; a second run in the same call packs its own), so no variant's test log is left behind.
pack_logs() {
  local loose
  loose=$(cd "$OUT" && find . -maxdepth 1 -type f ! -name '*.tar.gz' -printf '%f\n')
  [ -n "$loose" ] || return 0
  # shellcheck disable=SC2086
  (cd "$OUT" && tar czf "logs_${MODE}_$(date -u +%H%M%S).tar.gz" $loose && rm -f $loose)
}
trap pack_logs EXIT

stage device
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1 \
  | tee "$OUT/device.txt"
nvcc --version | tail -n 2 | tee -a "$OUT/device.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

stage build
if compgen -G ".devwheel/*.whl" > /dev/null; then
  $PY -m pip install -q --no-deps --force-reinstall .devwheel/*.whl 2>&1 | tee "$OUT/build.log"
else
  $PY -m pip install --no-build-isolation --no-deps . -q 2>&1 | tee "$OUT/build.log"
fi
if ! (cd /tmp && $PY -c "from gpt_oss_native import _C; assert _C.built_with_cuda and _C.cuda_devices()"); then
  echo "BUILD FAILED"; exit 1
fi

if [ "$MODE" = timeline ]; then  # needs .devwheel/timeline/NAME/ (build_device_wheel.sh timeline timeline:NAME=PATCH)
  for dir in .devwheel/timeline/*/; do
    compgen -G "$dir/*.whl" > /dev/null || continue
    name=$(basename "$dir"); site=/tmp/ab/timeline-$name
    rm -rf "$site" && $PY -m pip install -q --no-deps --target "$site" "$dir"/*.whl
    for model in ${TIMELINE_MODELS:-20b}; do
      stage "timeline of $name: one $model decode step at ${TIMELINE_CONTEXTS:-1024 8192}, kernel by kernel"
      for ctx in ${TIMELINE_CONTEXTS:-1024 8192}; do
        PYTHONPATH=$site:${PYTHONPATH:-} timeout 240 $PY benchmarks/timeline.py --model "$model" --context "$ctx" \
          --dump "$OUT/timeline_${name}_${model}_$ctx.npz" \
          2>&1 | tee "$OUT/timeline_${name}_${model}_$ctx.log" | grep -v '^{'
      done
    done
  done
  stage done
  exit 0
fi

if [ "$MODE" != bench ] && [ "$MODE" != bench-full ] && [ "$MODE" != ab ]; then
  # Full logs go to $OUT; the console gets the summaries.
  stage "pytest -m cuda, prefill by per-token replay"
  # Other modules may import packages the device image lacks (openai, pexpect): collect past them.
  GPT_OSS_NATIVE_CUDA_PREFILL=replay timeout 300 $PY -m pytest -m cuda -q -rfE --durations=12 -p no:cacheprovider \
    --continue-on-collection-errors tests > "$OUT/pytest.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -n 60
  stage "end-to-end tests, batched prefill (default)"
  timeout 200 $PY -m pytest -q -rfE --durations=8 -p no:cacheprovider tests/test_cuda_end_to_end.py \
    > "$OUT/pytest_batched_prefill.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_batched_prefill.log" | tail -n 20
fi
[ "$MODE" = tests ] && { stage done; exit 0; }

if [ "$MODE" = ab ]; then
  for probe in ${AB_PROBES:-}; do  # built by build_device_wheel.sh into .devwheel/probes/
    stage "$probe (benchmarks/$probe.cu)"
    timeout 90 ".devwheel/probes/$probe" 2>&1 | tee "$OUT/$probe.txt"
  done
  for dir in .devwheel .devwheel/*/; do
    compgen -G "$dir/*.whl" > /dev/null || continue
    name=$(basename "$dir"); [ "$dir" = .devwheel ] && name=baseline; site=/tmp/ab/$name
    [ "$name" = timeline ] && continue  # the profiling build: `timeline` mode
    # AB_VARIANTS="a b": only those variants (and the baseline), so one build serves several shorter calls.
    if [ -n "${AB_VARIANTS:-}" ] && [ "$name" != baseline ] && [[ " $AB_VARIANTS " != *" $name "* ]]; then continue; fi
    rm -rf "$site" && $PY -m pip install -q --no-deps --target "$site" "$dir"/*.whl
    stage "variant $name"
    src=$PWD; [ -d "$dir/tree" ] && src=$(cd "$dir/tree" && pwd)  # the variant's tests and benchmarks
    tests_var="AB_TESTS_$name"; tests="${!tests_var:-${AB_TESTS:-}}"  # AB_TESTS_NAME: that variant's own test files
    [ "$name" = baseline ] && tests="${AB_TESTS_baseline:-}"  # main: only what AB_TESTS_baseline names (`tests` mode covers it)
    env_var="AB_ENV_$name"; read -r -a variant_env <<< "${!env_var:-}"  # AB_ENV_NAME: that variant's environment
    if [ -n "$tests" ]; then
      # shellcheck disable=SC2086
      (cd "$src" && env "${variant_env[@]}" PYTHONPATH=$site:${PYTHONPATH:-} timeout 240 $PY -m pytest -q -rfE -p no:cacheprovider $tests) \
        > "$OUT/ab_tests_$name.log" 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/ab_tests_$name.log" | tail -n 12
    fi
    sweep=""; [ "$name" = baseline ] && [ -n "${AB_SWEEP:-}" ] && sweep=--sweep
    env "${variant_env[@]}" PYTHONPATH=$site:${PYTHONPATH:-} timeout 120 $PY "$src/benchmarks/bench_kernels_weights.py" --reps 10 $sweep 2>&1 \
      | grep -E "^(moe|bf16_gemv|unembedding|out-proj|sample)|sweep" | tee "$OUT/ab_kernels_$name.log"
    # shellcheck disable=SC2086
    env "${variant_env[@]}" PYTHONPATH=$site:${PYTHONPATH:-} timeout 240 $PY "$src/benchmarks/decode.py" --models ${AB_MODELS:-20b} --contexts ${AB_CONTEXTS:-1024} --prefill-lengths \
      2>&1 | grep -E "^(20b|120b) +[0-9]+ +[0-9.]+ " | tee "$OUT/ab_decode_$name.log"
  done
  stage done
  exit 0
fi

stage benchmark
if [ "$MODE" = full ] || [ "$MODE" = bench-full ]; then
  timeout 330 $PY benchmarks/decode.py --models 20b 120b --contexts 1024 8192 32768 --source "${DECODE_SOURCE:-memory}" \
    2>&1 | tee "$OUT/decode.log"
else
  timeout 120 $PY benchmarks/decode.py --models 20b --contexts 1024 8192 2>&1 | tee "$OUT/decode.log"
  timeout 120 $PY benchmarks/decode.py --models 120b --contexts 1024 2>&1 | tee -a "$OUT/decode.log"
fi
stage "prefill: batched vs per-token replay, 20b"
timeout 150 $PY benchmarks/decode.py --models 20b --contexts 1024 --tokens 32 --prefill-lengths 128 1024 4096 \
  2>&1 | tail -n 12 | tee "$OUT/prefill.log"

if command -v ncu > /dev/null; then
  stage "ncu: one decode step of a 2-layer 20b-shaped model"
  timeout 90 ncu --nvtx --nvtx-include "profile/" --graph-profiling node --cache-control all --clock-control none \
    --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu.csv" $PY benchmarks/decode.py --models 20b --profile \
    > "$OUT/ncu_stdout.log" 2>&1
  $PY benchmarks/decode.py --ncu-csv "$OUT/ncu.csv" 2>&1 | tee "$OUT/ncu_table.log" || tail -20 "$OUT/ncu_stdout.log"
fi
stage done
