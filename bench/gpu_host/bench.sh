# Rollout bench: in-rank vs standalone (vs standalone in-process). JSON on stdout and in $OUT.
set -o pipefail
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
mkdir -p /tmp/hpcppo
timeout ${BENCH_TIMEOUT:-560} python3 bench/rollout.py --model-dir /tmp/hpcppo/model --work-dir /tmp/hpcppo/bench "$@" > $OUT/bench.json 2> $OUT/bench.err
echo "exit $?"; cat $OUT/bench.json; grep "^# " $OUT/bench.err | cut -c1-400
du -sh /tmp/hpcppo/bench/.cache/* 2>/dev/null
