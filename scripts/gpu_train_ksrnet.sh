#!/usr/bin/env bash
# Trains KSR-Net (all four stages) on a lent GPU machine, then measures it there: calibration, GPU
# cost (ksrnet_cost.py) and the ablation against late fusion on the fixed hard test tracks.
# Two phases, so each fits one device call (600 s at most) on the same warm machine:
#   OUT=/dir scripts/gpu_train_ksrnet.sh train   [config] [hard timeout of training, s]
#   OUT=/dir scripts/gpu_train_ksrnet.sh measure [ablation tracks]
# or both in one call (... all [config] [timeout] [ablation tracks]: only where the call may take
# longer than 600 s, or with a shorter config). The run lives in runs/ksr-gpu
# (ignored by git, kept between calls on a warm machine); weights, logs and tables go to $OUT.
# With CALL_LIMIT_S set to the device call's timeout_s, the training's limit shrinks so that the
# phase ends in time (scripts/gpu_env.sh). configs/ksrnet-tiny-gpu.yaml trains for 7.5 minutes;
# with each stage's start and validation the train phase takes about 9. KSR_STAGES picks the
# stages (default 1,1b,2,3): a config with init_weights may continue a run in stage 3 alone.
set -u
phase=${1:-}  # no default: "all" does not fit one 600 s device call (train ~9 min + measure ~2)
case "$phase" in
  train|measure|all) ;;
  *) echo "usage: OUT=DIR $0 train [config] [timeout s] | measure [tracks] | all [config] [timeout s] [tracks]"; exit 2 ;;
esac
run=runs/ksr-gpu
source scripts/gpu_env.sh

train() {
  local config=${1:-configs/ksrnet-tiny-gpu.yaml} limit=${2:-570}
  limit=$(training_limit "$limit" "${3:-20}") || return 1
  echo "training limit: $limit s"
  timeout "$limit" python3 -m ksrnet.cli train-ksrnet "$config" --run-dir "$run" \
    --stages "${KSR_STAGES:-1,1b,2,3}" 2>&1 | grep -v "^\s*$" \
    | tail -c 20000 > "$OUT/train.log"
  local rc=${PIPESTATUS[0]}
  echo "train exit: $rc"
  tail -5 "$OUT/train.log"
  # A resumed stage logs to version_1, 2, ...: copy every version (version_0 alone was the stale part).
  for f in "$run"/stage-*/logs/version_*/metrics.csv; do
    [ -f "$f" ] || continue
    local v=${f%/metrics.csv} s=${f#"$run"/stage-}
    cp "$f" "$OUT/metrics-${s%%/*}-${v##*/}.csv"
  done
  cp "$run"/ksrnet.safetensors "$run"/ksrnet.json "$run"/config.yaml "$OUT"/ 2>/dev/null
  ls "$run"
  return "$rc"  # was ls's status: `all` measured stage 2's weights after a timeout in stage 3
}

measure() {
  local tracks=${1:-500}
  [ -f "$run/ksrnet.safetensors" ] || { echo "no $run/ksrnet.safetensors: run the train phase first"; return 1; }
  local stage
  stage=$(python3 -c "import json; print(json.load(open('$run/ksrnet.json')).get('stage'))")
  [ "$stage" = 3 ] || { echo "$run/ksrnet.safetensors is stage $stage's, not stage 3's: run the train phase again (it resumes)"; return 1; }
  python3 -m ksrnet.cli calibrate --model "$run" --synth 200 --preset mix --fusions product --device "$device" \
    2>&1 | tail -3
  cp "$run"/ksrnet.json "$OUT"/
  local grid
  grid=$(python3 -c "import json; h, w = json.load(open('$run/ksrnet.json'))['config']['lr_size']; print(f'{h}x{w}')")
  timeout 120 python3 benchmarks/ksrnet_cost.py --device "$device" --batch 64 --threads 8 --lr-size "$grid" \
    > "$OUT/cost.txt" 2>&1
  echo "cost exit: $?"; cat "$OUT/cost.txt"
  timeout 240 python3 -m ksrnet.cli eval --ablation --ksrnet "$run" --synth-tracks "$tracks" --presets hard \
    --device "$device" --batch-size 64 --markdown "$OUT/ablation.md" > "$OUT/ablation.txt" 2>&1
  echo "ablation exit: $?"; cat "$OUT/ablation.md" 2>/dev/null || tail -20 "$OUT/ablation.txt"
}

case "$phase" in
  train) train "${2:-}" "${3:-}" ;;
  measure) measure "${2:-}" ;;
  all) train "${2:-}" "${3:-}" 420 && measure "${4:-}" ;;  # 420 s kept for measure's steps
  *) echo "usage: OUT=DIR $0 train [config] [timeout s] | measure [tracks] | all [config] [timeout s] [tracks]"; exit 2 ;;
esac
ls -la "$OUT"
