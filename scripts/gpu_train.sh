#!/usr/bin/env bash
# Trains the shipped recognizer on a lent GPU machine (no network there; python3 there has torch,
# lightning, opencv), then measures it on the fixed hard test set with GPU timings.
# PyAV and the font packages travel as wheels in .whl/ (scripts/gpu_env.sh, benchmarks/RESULTS.md).
# Usage: OUT=/some/dir scripts/gpu_train.sh [config] [hard timeout of training, s] [test tracks]
# The whole script takes the training's max_minutes plus about 2 minutes. Set CALL_LIMIT_S to the
# device call's timeout_s and the training limit shrinks to leave time for the export and the benchmark.
set -u
config=${1:-configs/parseq-tiny-gpu.yaml}
limit=${2:-480}
test_tracks=${3:-2000}
source scripts/gpu_env.sh
# The generator's speed on that machine's cores, when asked (THROUGHPUT=1): about a minute of device
# time. One worker, then as many as the config trains with: if each of those delivers much less
# than the one alone, the cores (or their threads) are contended, not the code slow.
if [ "${THROUGHPUT:-0}" = 1 ]; then
  python3 benchmarks/synth_throughput.py --tracks 100 2>&1 | tail -1
  workers=$(awk '/^[[:space:]]*num_workers:/ {print $2; exit}' "$config")
  timeout 60 python3 benchmarks/loader_throughput.py --config "$config" --workers 1 2>&1 | tail -1
  # Each worker's first batches wait for its echo buffer and glyph caches: skip two per worker.
  [ -n "$workers" ] && [ "$workers" -gt 1 ] && timeout 60 python3 benchmarks/loader_throughput.py \
    --config "$config" --workers "$workers" --warmup $(( 2 * workers )) --batches $(( 4 * workers )) 2>&1 | tail -1
fi
limit=$(training_limit "$limit" $(( test_tracks > 0 ? 130 : 30 ))) || exit 1
echo "training limit: $limit s"
# Lightning's max_minutes counts from the fit's start; start-up, the last validation and the export
# come on top (about 45 s here). A hard limit inside that cut stage V (session 17) 239 steps before
# its own export, its weights then coming from the last periodic checkpoint: so where the config's
# minutes do not fit, the budget is lowered to what does (the time-based cosine anneals over it).
budget=()
minutes=$(awk '/^[[:space:]]*max_minutes:/ {print $2; exit}' "$config")
if [ -n "$minutes" ] && awk -v m="$minutes" -v l="$limit" 'BEGIN { exit !(m * 60 + 45 > l) }'; then
  fitted=$(awk -v l="$limit" 'BEGIN { m = (l - 45) / 60; printf "%.2f", (m < 0.25 ? 0.25 : m) }')
  echo "max_minutes $minutes + about 45 s of start and export exceed the $limit s limit: training $fitted minutes"
  budget=(--max-minutes "$fitted")
fi
# One run dir per config: a second call on a warm machine with another config (say, continuing this
# one's weights) must start its own run, not resume this one.
run=/tmp/run-$(basename "$config" .yaml)
# GPU busy % and memory every 15 s during training: says whether the GPU or the data workers set the pace.
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > "$OUT/gpu_util.csv" 2>/dev/null &
  sampler=$!
fi
timeout "$limit" python3 -m ksrnet.cli train "$config" --run-dir "$run" ${budget[@]+"${budget[@]}"} 2>&1 | grep -v "^\s*$" | tail -c 20000 > "$OUT/train.log"
echo "train exit: ${PIPESTATUS[0]}"
[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null && echo "GPU busy % while training: $(cut -d, -f2 "$OUT/gpu_util.csv" | tr -d ' %' | sort -n | tr '\n' ' ')"
# If the hard timeout cut the run before its own export, export the last checkpoint ourselves.
if [ ! -f "$run/model.safetensors" ] && [ -f "$run/checkpoints/last.ckpt" ]; then
  python3 -m ksrnet.export_checkpoint "$run/checkpoints/last.ckpt" "$run/model.safetensors"
fi
cp "$run"/model.safetensors "$run"/model.json "$run"/config.yaml "$OUT"/ 2>/dev/null
latest=$(ls -d "$run"/logs/version_* 2>/dev/null | sort -V | tail -1)  # a resumed run logs to version_1, ...
[ -n "$latest" ] && cp "$latest/metrics.csv" "$OUT"/ 2>/dev/null
[ -f "$OUT/metrics.csv" ] && python3 -m ksrnet.data_wait "$OUT/metrics.csv"
tail -5 "$OUT/train.log"
if [ -f "$run/model.safetensors" ] && [ "$test_tracks" -gt 0 ]; then
  timeout 90 python3 benchmarks/recognizer.py --model "$run" --tracks "$test_tracks" --device "$device" \
    --threads 8 --no-frame-agreement --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
  echo "benchmark exit: $?"; grep -E "^\| product|error /|speed" "$OUT/bench.txt"
fi
ls -la "$OUT"
