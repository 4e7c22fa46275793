#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, in one call after bench/gpu_prepare.sh ran here:
#   run(command="bash bench/gpu_session.sh", carry=[".gpudata"], timeout_s=600)
# About 6 minutes. Each step writes under $OUT and goes on if the one before failed:
#   1. bench/gpu_generate.py: parity, model-only and served real-time capacity per backend
#   2. pytest -m gpu: the GPU parity tests (tiny model trained on the carried records)
#   3. bench serve: the whole service on the GPU (embedded broker, cuda-graphs), as fast as
#      possible and in real time, with the per-worker CPU share
#   4. bench/serve_workers.py: several `serve` processes in one consumer group sharing the GPU
#      under MPS, in real time, with 2 s and with 10 s segments (WORKERS, PATIENTS_2S,
#      PATIENTS_10S, MPS, SEGMENTS="2 10"); about 5 minutes; the first worker is profiled with
#      py-spy (its threads' CPU and where they spend it: sw-logs/*/worker0-profile.txt)
#   5. one worker on its own under py-spy (bench serve in real time, 3,000 patients, 10 s)
# STEPS picks the steps (default 123; "4" runs only the workers).
# Environment: SERVE_PATIENTS (default 1000,4000), SERVE_SECONDS (20), RT_PATIENTS (2000),
# RT_SECONDS (60); each step's time limit T1 (150), T2 (120), T3 (250) seconds. On the 2026-11-26
# H200 call, 361 s in all, of the 900 s of device time a session gets (step 3 ran to its limit
# then: registrations went one round trip each; since, 4,000 take about a second).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpudata/whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
shared=$(dirname "$PWD")/shared
[ -e "$shared/data" ] || { mkdir -p "$shared" && ln -sfn "$PWD/.gpudata/data" "$shared/data"; }
nvidia-smi -L | tee "$OUT/gpu.txt"

STEPS=${STEPS:-123}
step() { [[ "$STEPS" == *"$1"* ]]; }

step 1 && echo "== 1. generation" && {
timeout "${T1:-150}" "$PY" bench/gpu_generate.py --out "$OUT/gpu-generate.json" --budget-s $(( ${T1:-150} * 6 / 10 )) \
  --batches 1024,4096,16384 --variants torch:fp32,cuda-graphs:fp16:inductor 2>&1 \
  | grep -v "^W1" | tee "$OUT/gpu-generate.txt" | tail -12
}

step 2 && echo "== 2. GPU tests" && {
timeout "${T2:-120}" "$PY" -m pytest -q -m gpu tests/test_runtime.py -p no:cacheprovider -rs -W ignore 2>&1 \
  | tee "$OUT/pytest-gpu.txt" | tail -4
}

step 3 && echo "== 3. the service on this GPU" && {
timeout "${T3:-250}" "$PY" -m twin_engine.ops.cli bench serve --patients "${SERVE_PATIENTS:-1000,4000}" --duration "${SERVE_SECONDS:-20}" \
  --realtime-patients "${RT_PATIENTS:-2000}" --realtime-duration "${RT_SECONDS:-60}" \
  --json "$OUT/serve-gpu.json" > "$OUT/serve-gpu.log" 2>&1
grep -E '^\{"patients' "$OUT/serve-gpu.log" | "$PY" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r["patients"], "x%s" % r["speed"], "%.1f segments/s" % r["segments_per_s_end_to_end"],
          "misses", r.get("deadline_misses"), "p99 %.2f s" % r["event_to_effect_p99_s"],
          "service cores %.2f" % r["service_process_cpu_cores"])'
}

step 4 && echo "== 4. several workers on this GPU" && {
# one thread each for the workers' host-side arithmetic and compiles: they share the cores
export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1
# MPS (MPS=0: plain time-slicing): with 2 s segments, 12 workers time-sliced missed 11,508
# segments in 40 s, under MPS 1 (H100, 2026-11-26; docs/BENCHMARKS.md)
[ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d && echo "MPS on"
for seg in ${SEGMENTS:-2 10}; do
  n=$([ "$seg" = 2 ] && echo "${PATIENTS_2S:-18000}" || echo "${PATIENTS_10S:-36000}")
  timeout "${T4:-200}" "$PY" bench/serve_workers.py --workers "${WORKERS:-12}" --patients "$n" \
    --segment-seconds "$seg" --seconds "${WINDOW_S:-40}" --warmup "${WARMUP_S:-25}" --logs /tmp/sw-logs \
    --json "$OUT/serve-workers-gpu-${seg}s.json" --py-spy "$([ -x /tmp/site/bin/py-spy ] && echo /tmp/site/bin/py-spy)" 2>&1 | tee "$OUT/serve-workers-gpu-${seg}s.log" | tail -2
done
[ "${MPS:-1}" = 1 ] && echo quit | nvidia-cuda-mps-control 2>/dev/null
tar -czf "$OUT/serve-workers-logs.tar.gz" -C /tmp sw-logs 2>/dev/null
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$OUT/gpu.txt"
}

step 5 && echo "== 5. one worker's profile (py-spy)" && {
# bench serve in real time (PROFILE_PATIENTS, 10 s segments: what each of twelve workers carried
# at 36,000), recorded by py-spy from outside after the compiles, with each thread's CPU
seg_s=${PROFILE_SEGMENT_S:-10}
TWIN_ENGINE_SEGMENT_SECONDS=$seg_s "$PY" -m twin_engine.ops.cli bench serve --patients "${PROFILE_PATIENTS:-3000}" --speed 1 \
  --duration "${PROFILE_RUN_S:-110}" --realtime-patients 0 > "$OUT/profile-serve.log" 2>&1 &
pid=$!
sleep "${PROFILE_DELAY_S:-60}"
"$PY" bench/profile_summary.py --snapshot $pid > /tmp/cpu0.txt
t0=$(date +%s.%N)
/tmp/site/bin/py-spy record --pid $pid --threads --format raw --rate 250 --duration "${PROFILE_S:-30}" \
  -o "$OUT/profile.raw" > /dev/null 2>&1
t1=$(date +%s.%N)
"$PY" bench/profile_summary.py --snapshot $pid > /tmp/cpu1.txt
wait $pid
"$PY" bench/profile_summary.py "$OUT/profile.raw" --top 40 --cpu /tmp/cpu0.txt /tmp/cpu1.txt \
  --seconds "$("$PY" -c "print($t1 - $t0)")" > "$OUT/profile.txt"
head -30 "$OUT/profile.txt"; grep -E '^\{"patients' "$OUT/profile-serve.log" | cut -c1-400
}
