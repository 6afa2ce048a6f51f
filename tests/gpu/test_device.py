"""A Slurm task bound to one GPU sees it as cuda:0, whatever its SLURM_LOCALID."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

PROBE = """
import json, torch
from hpc_ppo.dist import pick_device
from hpc_ppo.rank_env import export_torch_env, resolve_rank_env
env = resolve_rank_env()
device = pick_device("auto", env.local_rank)
export_torch_env(env)
import os
x = torch.ones(1, device=device)
print(json.dumps({"local_rank": env.local_rank, "source": env.source, "device": str(device),
                  "tensor_device": str(x.device), "count": torch.cuda.device_count(),
                  "LOCAL_RANK": os.environ["LOCAL_RANK"]}))
"""


def test_one_bound_gpu_with_localid_3_is_cuda0(bound_gpu_env):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=bound_gpu_env(3),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["source"] == "slurm"
    assert got["count"] == 1
    assert got["local_rank"] == 0 and got["LOCAL_RANK"] == "0"  # vLLM reads LOCAL_RANK
    assert got["device"] == got["tensor_device"] == "cuda:0"
