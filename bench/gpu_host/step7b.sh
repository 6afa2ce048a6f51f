# 7B shape on the GPU host (after setup.sh): actor MFU with 16 layers in bf16, then push/sleep/wake
# of all 28 layers. Lease 4 (2026-11-24) ran exactly this; figures in docs/PERFORMANCE.md.
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1; rm -rf /tmp/hpcppo/step /tmp/hpcppo/model; S=/tmp/hpcppo/s7
python3 bench/step.py --out $S --timeout-s 320 --shape 7b --layers 16 --steps 3 --log $OUT/s7.log model.dtype=bfloat16 rollout.enforce_eager=true rollout.gpu_memory_utilization=0.3 trainer.micro_batch_size=8 trainer.max_tokens_per_micro_batch=8192 > $OUT/s7.json 2>&1; echo "s7 rc $? at ${SECONDS}s"
rm -rf $S  # its checkpoint is ~29 GB of the 64 GB disk
timeout $((590-SECONDS)) python3 bench/rollout.py --shape 7b --dtype bfloat16 --modes inrank --cycles 3 --prompts 32 --max-new 64 --eager --util 0.5 --work-dir /tmp/hpcppo/r7 --mode-timeout-s $((575-SECONDS)) > $OUT/r7.json 2>&1; echo "r7 rc $? at ${SECONDS}s"
tail -c 3000 $OUT/s7.json $OUT/r7.json
