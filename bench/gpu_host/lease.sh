# One x2 lease for the GPU acceptance points (README.md beside this file): an `hpc-ppo bundle`
# carried part by part while GPU 0 runs the no-vLLM training bench, then both GPUs at once.
#   carry K       copy .gpu-bundle/pK to ~/gb (carry it); K=1 also starts BG_JOB in the
#                 background (setsid: it outlives the call while the host stays warm):
#                 BG_JOB=train (train.sh on GPU 0), model7b (tp2.sh's 7B model folder, GPU 1)
#   install       bundle.sh install, vLLM's import time (-X importtime)
#   one-gpu       GPU 1: the 1-GPU tests; GPU 0: speed.sh (PARTS) once train.sh is done;
#                 both awaited; bg.tgz holds train.sh's and the tests' files
#   two-gpu       the TP=2 tests (both GPUs)
#   warm N        GPU 0 alone: N more requeues of speed.sh's cold run (2 steps each), their
#                 JSON back: the warm start's spread on a quiet host
#   imports       a rank's imports, then the trainer's, then vLLM's, under -X importtime
#   profile       GPU 0: one requeue of speed.sh's cold run under py-spy (carried in .devrun/
#                 with part 1), interpreter-lock holders (--gil), then wall time (--idle);
#                 bench/pyspy_summary.py's JSON of each in $OUT/profile.tgz
# Results under $OUT; background output under /tmp/hpcppo/bg (each call's $OUT starts empty).
set -o pipefail
BG=/tmp/hpcppo/bg
case "$1" in
carry)
  mkdir -p ~/gb $BG && cp .gpu-bundle/p$2/* ~/gb/ && echo "part $2: $(du -sh ~/gb | cut -f1) in ~/gb"
  if [ "$2" = 1 ]; then
    python3 -m pip freeze > $OUT/freeze.txt
    ls .devrun/py_spy-*.whl > /dev/null 2>&1 && python3 -m pip install -q --target ~/pyspy .devrun/py_spy-*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    case "$BG_JOB" in
    train) CUDA_VISIBLE_DEVICES=0 OUT=$BG setsid nohup bash bench/gpu_host/train.sh > $BG/train.log 2>&1 < /dev/null & ;;
    model7b) CUDA_VISIBLE_DEVICES=1 setsid nohup bash bench/gpu_host/tp2.sh model > $BG/train.log 2>&1 < /dev/null & ;;
    esac
  fi
  tail -n 2 $BG/train.log 2>/dev/null ;;
install)
  bash bench/gpu_host/bundle.sh install
  PYTHONPATH=$PWD:$HOME/hpc-ppo-site python3 -X importtime -c "from vllm import LLM" 2> $BG/importtime.txt
  sort -t'|' -k2 -n -r $BG/importtime.txt | head -12
  tail -n 5 $BG/train.log ;;
one-gpu)
  (CUDA_VISIBLE_DEVICES=1 TEST_TIMEOUT=560 OUT=$BG bash bench/gpu_host/tests.sh tests/gpu \
     --ignore=tests/gpu/test_tp2.py > $BG/tests1.out 2>&1) &
  # GPU 0 must be free: vLLM's memory profile fails when another process frees memory meanwhile
  # (it did, the one time this waited only 120 s)
  for i in $(seq 150); do pgrep -f gpu_host/train.sh > /dev/null || break; sleep 2; done
  pkill -f 'gpu_host/train.sh|bench/train.py' && { sleep 5; echo "train.sh stopped unfinished"; }
  echo "GPU 0 free at ${SECONDS}s"; cat $BG/train.log
  CUDA_VISIBLE_DEVICES=0 bash bench/gpu_host/speed.sh
  wait; tail -n 25 $BG/tests1.out; cp $BG/pytest.log $OUT/pytest_1gpu.log
  tar czf $OUT/bg.tgz -C $BG . ;;
two-gpu)
  TEST_TIMEOUT=570 bash bench/gpu_host/tests.sh tests/gpu/test_tp2.py ;;
warm)
  export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
  R=$(ls -d /tmp/hpcppo/speed/runs/gpu-step-* | head -1); W=/tmp/hpcppo/warm-out
  rm -rf $W; mkdir -p $W
  for i in $(seq "$2"); do
    CUDA_VISIBLE_DEVICES=0 python3 bench/step.py --out /tmp/hpcppo/speed --timeout-s 120 \
      --resume "$R" --steps 2 --log $W/warm$i.log > $W/warm$i.json 2> $W/warm$i.err
    echo "warm $i rc $?"; python3 -c "import json; d = json.load(open('$W/warm$i.json'))
print(d['launch_to_first_step_s'], d['first_step_s'], d['startup_s'], d['gen_tokens_per_s'])"
  done
  tar czf $OUT/warm.tgz -C $W . ;;
imports)
  PYTHONPATH=$PWD:$HOME/hpc-ppo-site python3 -X importtime -c "
import torch, torch.distributed
import hpc_ppo.checkpoint, hpc_ppo.config, hpc_ppo.dist, hpc_ppo.runlog, hpc_ppo.metrics
import hpc_ppo.trainer
from vllm import LLM" 2> $OUT/importtime.txt
  python3 - $OUT/importtime.txt <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    if line.startswith("import time:") and "cumulative" not in line:
        _, cum, name = line.split(":", 1)[1].split("|")
        if len(name) - len(name.lstrip()) <= 5:  # three levels deep at most
            rows.append((int(cum), name.rstrip()))
for cum, name in sorted(rows, reverse=True)[:30]:
    print(f"{cum / 1e6:6.2f} s {name}")
PY
  ;;
profile)
  export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
  R=$(ls -d /tmp/hpcppo/speed/runs/gpu-step-* | head -1); W=/tmp/hpcppo/profile-out
  rm -rf $W; mkdir -p $W
  # --nonblocking: the blocking sampler pauses every thread 100 times a second (a warm start
  # under it ran past 110 s on 2026-11-30)
  for mode in gil idle; do
    CUDA_VISIBLE_DEVICES=0 timeout 250 ~/pyspy/bin/py-spy record --nonblocking --$mode \
      --threads --subprocesses -r 100 --format raw -o $W/$mode.txt -- python3 bench/step.py \
      --out /tmp/hpcppo/speed --timeout-s 200 --resume "$R" --steps 1 --log $W/$mode.log \
      > $W/$mode.out 2> $W/$mode.err
    echo "$mode rc $?"; sed '/^py-spy>/d' $W/$mode.out > $W/$mode.json  # its banner: stdout
    python3 bench/pyspy_summary.py $W/$mode.txt > $W/$mode.summary.json
    python3 -c "import json; d = json.load(open('$W/$mode.json')); print(d['launch_to_first_step_s'], d['startup_s'])"
  done
  tar czf $OUT/profile.tgz -C $W . ;;
*) echo "usage: $0 carry K | install | one-gpu | two-gpu | warm N | imports | profile" >&2; exit 2 ;;
esac
