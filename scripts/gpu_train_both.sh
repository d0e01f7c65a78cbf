#!/usr/bin/env bash
# Trains the recognizer (configs/parseq-tiny-gpu-n.yaml, from stage M) and KSR-Net
# (configs/ksrnet-tiny-gpu-shared.yaml, from scratch) side by side on one lent GPU machine, in one
# device call of under 10 minutes, then times KSR-Net on that GPU. Both models are tiny: the data
# workers on the CPU cores bound each run, not the GPU, so the configs split the 16 cores (7 + 8).
# The device returns at most 8 files, so each run comes back as one tarball:
#   $OUT/recognizer.tar.gz (scripts/gpu_train.sh's files), $OUT/ksrnet.tar.gz (gpu_train_ksrnet.sh's
#   train phase), $OUT/cost.txt (benchmarks/ksrnet_cost.py on the GPU).
# Calibrate and benchmark them afterwards on any machine (benchmarks/RESULTS.md, session 14).
# Usage: OUT=/dir scripts/gpu_train_both.sh [hard timeout of each training, s]
# REC_CONFIG / KSR_CONFIG override the configs (a smoke run on a CPU with tiny budgets, or a new
# run); KSR_STAGES picks KSR-Net's stages; COST=0 skips the timing (its figures do not change while
# the architecture does not) and gives its 80 s to training. REC2_CONFIG trains a second recognizer
# config in KSR-Net's place: a paired experiment under the same conditions (same minutes, same share
# of the cores), back as $OUT/recognizer2.tar.gz; COST is then 0. The defaults record session 14's
# runs, which read stage M's weights from runs/shipped-m/ (see the configs): carry that folder, or
# point both at configs that start from parseq-tiny.
set -u
limit=${1:-460}
export CALL_LIMIT_S=${CALL_LIMIT_S:-590}  # the device call's timeout_s (600 at most)
rec_config=${REC_CONFIG:-configs/parseq-tiny-gpu-n.yaml}
ksr_config=${KSR_CONFIG:-configs/ksrnet-tiny-gpu-shared.yaml}
source scripts/gpu_env.sh
rec2_config=${REC2_CONFIG:-}
cost=${COST:-1}
[ -n "$rec2_config" ] && cost=0  # no KSR-Net to time
# Both runs must end before the call does: the packing (and ksrnet_cost.py's 80 s) come after.
export KSRNET_DEADLINE=$(( KSRNET_DEADLINE - (cost == 1 ? 100 : 20) ))
# The second run's folder and tarball: KSR-Net's, or the second recognizer's.
second=ksr second_tar=ksrnet.tar.gz
[ -n "$rec2_config" ] && second=rec2 second_tar=recognizer2.tar.gz
mkdir -p "$OUT/rec" "$OUT/$second"
OUT=$OUT/rec bash scripts/gpu_train.sh "$rec_config" "$limit" 0 > "$OUT/rec/script.log" 2>&1 &
rec=$!
if [ -n "$rec2_config" ]; then
  OUT=$OUT/rec2 bash scripts/gpu_train.sh "$rec2_config" "$limit" 0 > "$OUT/rec2/script.log" 2>&1 &
else
  OUT=$OUT/ksr bash scripts/gpu_train_ksrnet.sh train "$ksr_config" "$limit" > "$OUT/ksr/script.log" 2>&1 &
fi
other=$!
# A line a minute, so the call's output shows whether the GPU or the cores were the bound; polled
# every 5 s, since each second spent waiting here is device time.
polls=0
while kill -0 "$rec" 2>/dev/null || kill -0 "$other" 2>/dev/null; do
  sleep 5
  polls=$(( polls + 1 ))
  [ $(( polls % 12 )) -eq 0 ] && echo "$(date +%T) gpu:" \
    "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)" \
    "load: $(cut -d' ' -f1 /proc/loadavg)"
done
wait "$rec"; echo "recognizer script exit: $?"
wait "$other"; echo "$second script exit: $?"
tail -n 4 "$OUT/rec/script.log" "$OUT/$second/script.log"
# Packed before the timing, so a call cut at its limit still brings the weights back.
tar czf "$OUT/recognizer.tar.gz" -C "$OUT" rec && tar czf "$OUT/$second_tar" -C "$OUT" "$second" && rm -rf "$OUT/rec" "$OUT/$second"
if [ "$cost" = 1 ]; then
  timeout 80 python3 benchmarks/ksrnet_cost.py --device "$device" --batch 64 --threads 8 --lr-size 20x48 \
    > "$OUT/cost.txt" 2>&1
  echo "cost exit: $?"; cat "$OUT/cost.txt"
fi
ls -la "$OUT"
