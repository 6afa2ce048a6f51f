# GPU tests: engine checks, PPO runs, device selection. Writes logs under $OUT.
set -o pipefail
export PYTHONPATH=$PWD:$HOME/hpc-ppo-site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, vllm, pytest; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'pytest', pytest.__version__)"
mkdir -p /tmp/hpcppo
python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from bench.rollout import write_model_dir; write_model_dir(Path('/tmp/hpcppo/model'))" 2>&1 | tail -2
export HPC_PPO_GPU_MODEL_DIR=/tmp/hpcppo/model
timeout ${TEST_TIMEOUT:-500} python3 -m pytest -v -s -p no:cacheprovider --basetemp=/tmp/hpcppo/pt "$@" 2>&1 | tee $OUT/pytest.log | grep -vE "^(INFO|\(EngineCore)|Loading weights|it/s\]" 
for f in /tmp/hpcppo/pt/engine*/checks.json /tmp/hpcppo/pt/engine*/log; do [ -f $f ] && cp $f $OUT/engine_$(basename $f); done
true
