# Sourced by the scripts/gpu_*.sh scripts on a lent GPU machine (no network there; its python3 has
# torch, lightning and OpenCV): installs PyAV and the font packages from the wheels carried in
# .whl/, puts them and src/ on the path, and says what the machine is. Sets $device (cuda or cpu).
# With CALL_LIMIT_S set to the device call's timeout_s, training_limit (below) shortens each
# training's hard limit so that its export and the files still make it back before the call is
# cut: a call whose limit left no room for them brought back nothing (session 14).
if [ -n "${CALL_LIMIT_S:-}" ] && [ -z "${KSRNET_DEADLINE:-}" ]; then
  export KSRNET_DEADLINE=$(( $(date +%s) + CALL_LIMIT_S ))
fi
# training_limit WANTED RESERVE: WANTED seconds, or fewer so that RESERVE seconds are left before
# the call's deadline; fails when the deadline leaves fewer than 30 to train.
training_limit() {
  local want=$1 reserve=$2 left
  if [ -n "${KSRNET_DEADLINE:-}" ]; then
    left=$(( KSRNET_DEADLINE - $(date +%s) - reserve ))
    if [ "$left" -lt "$want" ]; then
      [ "$left" -lt 30 ] && { echo "training_limit: only ${left} s left to train before the call's deadline" >&2; return 1; }
      want=$left
    fi
  fi
  echo "$want"
}
# Once per machine: scripts/gpu_train_both.sh sources this, then starts two scripts that source it
# again at the same time, and two pip installs into one folder at once can break it.
if [ ! -f /tmp/site/.ksrnet-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  touch /tmp/site/.ksrnet-wheels
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, lightning, av, cv2; print('torch', torch.__version__, 'lightning', lightning.__version__, 'av', av.__version__, 'cv2', cv2.__version__, 'cpus', __import__('os').cpu_count())"
device=cpu
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && device=cuda
