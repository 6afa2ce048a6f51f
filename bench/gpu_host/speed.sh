# Issue 13's figures on one H200 (after setup.sh or bundle.sh install), one call: the 0.5B GRPO
# step (DESIGN.md's peer workload, cold start), the requeue path (warm caches, --resume), then
# variable response lengths (32-512 tokens) padded vs padding-free. Back in $OUT: one JSON per
# part (startup_s: start-up by phase; median: the step's phases, profiled steps left out), the
# operator tables of three profiled steps (warm, padded, packed) and the logs as logs.tgz.
#   bash bench/gpu_host/speed.sh
set -o pipefail
export PYTHONPATH=$HOME/hpc-ppo-site:$PWD PYTHONUNBUFFERED=1
S=/tmp/hpcppo/speed; B="python3 bench/step.py --out $S"; rm -rf $S/runs
L=/tmp/hpcppo/speed-logs; rm -rf $L; mkdir -p $L  # stderr apart: the JSON files stay JSON
$B --timeout-s 260 --shape 0.5b --steps 6 --log $L/cold.log > $OUT/cold.json 2> $L/cold.err
echo "cold rc $? at ${SECONDS}s"; tail -3 $L/cold.err
R=$(ls -d $S/runs/gpu-step-* | head -1)
$B --timeout-s 150 --resume $R --steps 2 --log $L/warm.log trainer.profile_steps=[7] \
  > $OUT/warm.json 2> $L/warm.err
echo "warm rc $? at ${SECONDS}s"; tail -3 $L/warm.err
cp $R/profile/step_7.rank0.txt $OUT/profile_warm.txt
$B --timeout-s $(((560 - SECONDS) / 2)) --shape 0.5b --steps 5 --lengths 32:512 --compare-padding \
  --log $L/varlen.log trainer.profile_steps=[4] > $OUT/varlen.json 2> $L/varlen.err
echo "varlen rc $? at ${SECONDS}s"; tail -3 $L/varlen.err
tar czf $OUT/logs.tgz -C $L .
for f in cold warm varlen; do echo "== $f"; python3 -c "
import json, shutil
d = json.load(open('$OUT/$f.json'))
for name, r in ([('', d)] if 'median' in d else [('padded', d['padded']), ('packed', d['packed'])]):
    print(name, {k: r[k] for k in ('launch_to_first_step_s', 'first_step_s', 'startup_s', 'train_tokens_per_s', 'padding_fraction', 'actor_mfu', 'logprob_gap_last')})
    print(r['median'])
    if name and r['profiles']:
        shutil.copy(r['profiles'][0], '$OUT/profile_' + name + '.txt')
" 2>&1 | tail -6; done
