# Issue 13's figures on one H200 (after setup.sh or bundle.sh install), one call: the 0.5B GRPO
# step (DESIGN.md's peer workload, cold start), the requeue path (warm caches, --resume), the
# same two without torch.compile in vLLM (rollout.compile=false, own cold caches, 4 steps), then
# variable response lengths (32-512 tokens) padded vs padding-free. Back in $OUT: speed.tgz
# (one JSON per part: startup_s is start-up by phase, median the step's phases with profiled
# steps left out; the operator tables of three profiled steps; the logs) and a summary on stdout.
#   bash bench/gpu_host/speed.sh            # CUDA_VISIBLE_DEVICES picks the GPU
#   PARTS="cold warm" bash bench/gpu_host/speed.sh      # some of: cold warm nocompile varlen
set -o pipefail
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
S=/tmp/hpcppo/speed; N=/tmp/hpcppo/speed-nc; W=/tmp/hpcppo/speed-out
rm -rf $S/runs $N/runs $W; mkdir -p $W  # stderr apart: the JSON files stay JSON
B="python3 bench/step.py --out $S"; BN="python3 bench/step.py --out $N"
PARTS=${PARTS:-cold warm nocompile varlen}
part() {  # name, then the command's arguments
  local name=$1; shift
  case " $PARTS " in *" ${name%%_*} "*) ;; *) return ;; esac
  "$@" --log $W/$name.log > $W/$name.json 2> $W/$name.err
  echo "$name rc $? at ${SECONDS}s"; tail -2 $W/$name.err
}
part cold $B --timeout-s 200 --shape 0.5b --steps 6
R=$(ls -d $S/runs/gpu-step-* 2>/dev/null | head -1)
part warm $B --timeout-s 120 --resume $R --steps 2 trainer.profile_steps=[7]  # may change on resume
cp $R/profile/step_7.rank0.txt $W/profile_warm.txt 2>/dev/null
part nocompile_cold $BN --timeout-s 150 --shape 0.5b --steps 4 rollout.compile=false
RN=$(ls -d $N/runs/gpu-step-* 2>/dev/null | head -1)
part nocompile_warm $BN --timeout-s 100 --resume $RN --steps 2
part varlen $B --timeout-s $(((575 - SECONDS) / 2)) --shape 0.5b --steps 5 --lengths 32:512 \
  --compare-padding trainer.profile_steps=[4]
for f in cold warm nocompile_cold nocompile_warm varlen; do [ -s $W/$f.json ] || continue
echo "== $f"; python3 -c "
import json, shutil
d = json.load(open('$W/$f.json'))
for name, r in ([('', d)] if 'median' in d else [('padded', d['padded']), ('packed', d['packed'])]):
    print(name, {k: r[k] for k in ('launch_to_first_step_s', 'first_step_s', 'startup_s', 'train_tokens_per_s', 'padding_fraction', 'actor_mfu', 'gen_tokens_per_s', 'logprob_gap_last')})
    print(r['median'])
    if name and r['profiles']:
        shutil.copy(r['profiles'][0], '$W/profile_' + name + '.txt')
" 2>&1 | tail -6; done
tar czf $OUT/speed.tgz -C $W .
