# Step bench on the GPU host (after setup.sh): 0.5B sync (cold), async saves, requeue-path resume.
# Lease 4 (2026-11-24) ran exactly this; docs/PERFORMANCE.md has the figures. JSON + logs in $OUT.
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1; rm -rf /tmp/hpcppo/pt; S=/tmp/hpcppo/step; B="python3 bench/step.py --out $S"
$B --timeout-s 300 --shape 0.5b --steps 4 --log $OUT/sync.log > $OUT/sync.json 2>&1; echo "sync rc $? at ${SECONDS}s"
R=$(ls -d $S/runs/gpu-step-* | head -1)
T=$((590-SECONDS-100)); [ $T -gt 200 ] && T=200
$B --timeout-s $T --shape 0.5b --steps 4 --log $OUT/async.log trainer.async_save=true trainer.save_every=1 > $OUT/async.json 2>&1; echo "async rc $? at ${SECONDS}s"
rm -rf $S/runs/gpu-step-*/checkpoints/step_[1-3] $(ls -d $S/runs/gpu-step-* | tail -1)/checkpoints
$B --timeout-s $((585-SECONDS)) --resume $R --steps 2 --log $OUT/resume.log > $OUT/resume.json 2>&1; echo "resume rc $? at ${SECONDS}s"
tail -c 3000 $OUT/*.json
