"""One validation through the in-rank vLLM engine: `hpc-ppo run` on configs/tiny-verl.yaml.

    python -m pytest tests/gpu/test_validation_vllm.py -q      # on a GPU host with vllm

The built-in tiny model on the verl-layout tiny sets, rollout.engine=vllm: validation at step
0 (greedy, then sampled with val_n=4) and after the single training step.
"""

from __future__ import annotations

import json
import math

from helpers import REPO
from test_ppo_vllm import run_cli


def test_validation_through_vllm_greedy_and_sampled(tmp_path, local_env, vllm_cache):
    common = [
        str(REPO / "configs/tiny-verl.yaml"),
        vllm_cache,
        "rollout.engine=vllm",
        "trainer.device=cuda",
        "rollout.enforce_eager=true",
        "rollout.gpu_memory_utilization=0.2",
        "trainer.total_steps=1",
        "trainer.val_every=1",
        "trainer.val_before_train=true",
        "rollout.chunks=2",
    ]
    for name, sampling in (
        ("greedy", ["rollout.val_n=1", "rollout.val_temperature=0"]),
        ("sampled", ["rollout.val_n=4", "rollout.val_temperature=1.0"]),
    ):
        run_dir, _ = run_cli(
            local_env,
            *common,
            *sampling,
            f"trainer.output_dir={tmp_path / name}",
            f"trainer.run_name={name}",
            timeout=420,
        )
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        val = {r["step"]: r for r in rows if "val/reward_mean" in r}
        assert sorted(val) == [0, 1], rows
        for row in val.values():
            assert math.isfinite(row["val/reward_mean"])
            assert "val/synthetic/letters/reward_mean" in row
            assert "val/synthetic/sums/reward_mean" in row
            assert ("val/pass_at_4" in row) == (name == "sampled")
        samples = [
            json.loads(x) for x in (run_dir / "val" / "step_0.jsonl").read_text().splitlines()
        ]
        per_prompt = 1 if name == "greedy" else 4
        assert len(samples) == 16 * per_prompt
        assert any(s["response"] for s in samples)
