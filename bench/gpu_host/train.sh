# Issue 13: the training side of the 0.5B step (scoring passes + update, no vLLM, so no
# install needed), one process per workload, a variant per configuration. Full-length
# responses (the step bench's 32 x 8 x 512) and uniform 32-512. JSON + the default variant's
# operator table per workload in $OUT.
#   bash bench/gpu_host/train.sh
set -o pipefail
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
T="python3 bench/train.py --shape 0.5b --out /tmp/hpcppo/train --iters 4"
V=(--variant "model.attn_implementation=sdpa trainer.padding_free=false trainer.defer_grad_reduce=false"
   --variant "trainer.padding_free=false"
   --variant ""
   --variant "trainer.defer_grad_reduce=false"
   --variant "trainer.micro_batch_size=32 trainer.max_tokens_per_micro_batch=32768"
   --variant "trainer.micro_batch_size=64 trainer.max_tokens_per_micro_batch=65536")
for w in full:512:512 varlen:32:512; do
  name=${w%%:*}; lengths=${w#*:}
  $T --lengths $lengths "${V[@]}" --profile 2 > $OUT/train_$name.json 2> /tmp/hpcppo/train_$name.err
  echo "$name rc $? at ${SECONDS}s"; tail -3 /tmp/hpcppo/train_$name.err
  cp /tmp/hpcppo/train/profile-2/step_4.rank0.txt $OUT/profile_train_$name.txt 2>/dev/null
  python3 -c "
import json
for v in json.load(open('$OUT/train_$name.json'))['variants']:
    print(repr(v['variant']), v['median_s'], 'tok/s', v['train_tokens_per_s'], 'mfu', v['actor_mfu'],
          'peak', v['peak_allocated_gib'], 'mb', v['micro_batches'], 'diff', round(v['max_logprob_diff_vs_first'], 4))
"
done
