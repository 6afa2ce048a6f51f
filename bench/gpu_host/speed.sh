# Issue 13's figures on one H200 (after setup.sh), one call: the 0.5B GRPO step (DESIGN.md's
# peer workload, cold start), the requeue path (warm caches, --resume), then variable response
# lengths (32-512 tokens) padded vs padding-free. JSON + logs in $OUT; each JSON carries
# startup_s (start-up by phase) and the step's phases; profile.txt: step 7's top operators.
#   bash bench/gpu_host/speed.sh
set -o pipefail
export PYTHONPATH=$HOME/hpc-ppo-site:$PWD PYTHONUNBUFFERED=1
S=/tmp/hpcppo/speed; B="python3 bench/step.py --out $S"; rm -rf $S/runs
E=/tmp/hpcppo/speed-stderr; mkdir -p $E  # stderr apart: the JSON files stay JSON
$B --timeout-s 260 --shape 0.5b --steps 6 --log $OUT/cold.log > $OUT/cold.json 2> $E/cold
echo "cold rc $? at ${SECONDS}s"; tail -3 $E/cold
R=$(ls -d $S/runs/gpu-step-* | head -1)
# The warm run's second step (step 7) runs under torch.profiler: its operator table comes back.
$B --timeout-s 150 --resume $R --steps 2 --log $OUT/warm.log trainer.profile_steps=[7] \
  > $OUT/warm.json 2> $E/warm
echo "warm rc $? at ${SECONDS}s"; tail -3 $E/warm; cp $R/profile/step_7.rank0.txt $OUT/profile.txt
$B --timeout-s $(((575 - SECONDS) / 2)) --shape 0.5b --steps 4 --lengths 32:512 --compare-padding \
  --log $OUT/varlen.log > $OUT/varlen.json 2> $E/varlen
echo "varlen rc $? at ${SECONDS}s"; tail -3 $E/varlen
for f in cold warm varlen; do echo "== $f"; python3 -c "
import json, sys
d = json.load(open('$OUT/$f.json'))
for r in ([d] if 'median' in d else [d['padded'], d['packed']]):
    print({k: r[k] for k in ('launch_to_first_step_s', 'first_step_s', 'startup_s', 'train_tokens_per_s', 'padding_fraction', 'actor_mfu', 'logprob_gap_last')})
    print(r['median'])
" 2>&1 | tail -6; done
