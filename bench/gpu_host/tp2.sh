# Two GPUs (after setup.sh): full-depth 7B PPO (critic + reference, KL in the reward 0.001),
# TP=2 rollout with CUDA graphs, through `hpc-ppo run` (2 local ranks), then the 1024-prompt
# generation on that TP=2 pair. The model dir is written once (about 15 GB).
#   bash bench/gpu_host/tp2.sh ppo     # 3 PPO steps: phases, MFU, memory, final save
#   bash bench/gpu_host/tp2.sh gen     # 1024 prompts x 200 tokens -> 512 new, in-rank
#   bash bench/gpu_host/tp2.sh async   # what an async save blocks at full depth (see below)
#   bash bench/gpu_host/tp2.sh model   # only write the model folder (lease.sh: during the carry)
set -o pipefail
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
S=/tmp/hpcppo/s7; M=$S/model-7b-full; mkdir -p $S
python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from bench.rollout import write_model_dir; write_model_dir(Path('$M'), shape='7b')"
echo "7B model folder ready at ${SECONDS}s: $(du -sh $M | cut -f1)"
PPO7B="trainer.nprocs=2 rollout.tp=2 algo.name=ppo algo.kl_coef=0.001 algo.kl_mode=reward
  model.dtype=bfloat16 model.gradient_checkpointing=true rollout.enforce_eager=false
  rollout.gpu_memory_utilization=0.35 rollout.n=2 trainer.batch_size=64 algo.mini_batch_size=32
  trainer.micro_batch_size=4 trainer.max_tokens_per_micro_batch=4096 rollout.compile=true"
case "$1" in
model) ;;
ppo)
  timeout 570 python3 bench/step.py --out $S --timeout-s 540 --shape 7b --steps 3 --log $OUT/ppo7b.log \
    $PPO7B > $OUT/ppo7b.json 2>&1
  echo "ppo rc $? at ${SECONDS}s"; tail -c 5000 $OUT/ppo7b.json
  grep -E "all-reduce|Error|error" $OUT/ppo7b.log | head -20 ;;
gen)
  timeout 570 python3 bench/rollout.py --shape 7b --dtype bfloat16 --tp 2 --modes inrank \
    --prompts 1024 --prompt-len 200 --max-new 512 --util 0.35 --model-dir $M \
    --work-dir $S/runs --mode-timeout-s 540 > $OUT/gen1024.json 2> $OUT/gen1024.err
  echo "gen rc $? at ${SECONDS}s"; cat $OUT/gen1024.json; grep "^# " $OUT/gen1024.err | cut -c1-600 ;;
async)
  # The 128 GB disk holds one 83 GB policy + critic checkpoint, not two: step 2 saves in the
  # background (trainer.async_save), step 4's save commits it, and the run is killed (process
  # group, SIGKILL: SIGTERM would save again) as soon as step_2 is committed. Its metrics rows
  # say what the save blocked (time/save of step 2) and what the write cost step 3.
  # Disk: the speed and test runs' checkpoints and the carried wheels go first (83 GB to come)
  R=$S/runs-async; rm -rf $R /tmp/hpcppo/speed /tmp/hpcppo/speed-nc /tmp/hpcppo/pt ~/gb
  df -h /tmp | tail -1
  setsid python3 -m hpc_ppo.cli run configs/gpu-step.yaml model.path=$M trainer.output_dir=$R \
    trainer.total_steps=4 trainer.save_every=2 trainer.async_save=true $PPO7B > $OUT/async7b.log 2>&1 &
  pid=$!
  until ls -d $R/*/checkpoints/step_2 > /dev/null 2>&1 || ! kill -0 $pid 2> /dev/null || [ $SECONDS -gt 560 ]; do sleep 1; done
  kill -9 -- -$pid 2> /dev/null; echo "async: step_2 committed or run ended at ${SECONDS}s"
  python3 -c "
import glob, json
for row in map(json.loads, open(glob.glob('$R/*/metrics.jsonl')[0])):
    if 'time/step' in row:
        print({k: round(v, 2) for k, v in row.items() if k in ('step', 'time/step', 'time/save', 'gpu/peak_allocated_gib')})
"
  du -sh $R/*/checkpoints/* ; grep -E "checkpoint|Error" $OUT/async7b.log | head -10; rm -rf $R ;;
esac
df -h /tmp | tail -1; nvidia-smi --query-gpu=memory.used --format=csv,noheader
