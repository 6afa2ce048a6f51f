"""One rank of a TP=2 in-rank vLLM engine (two GPUs, two ranks); records what tests check.

    RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29611 \
        python tests/gpu/tp_checks.py MODEL_DIR WORK_DIR OUT_PREFIX     # and rank 1 likewise

Both ranks submit the same prompts with the same seeds: the TP group gathers them into one
batch of 2 x 32 requests, so each rank's share must come back identical to the other's.
Then the gap between vLLM's and FSDP's log-probs, before and after pushing perturbed weights
through the TP=2 slicing, and the sleep / wake / push cycle. Eager mode (start-up time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_checks import cycle_times, logprob_gap, recorder, reshard, timed_sleep  # noqa: E402

from hpc_ppo.config import load_config  # noqa: E402
from hpc_ppo.dist import init_distributed, pick_device  # noqa: E402
from hpc_ppo.model import build_tokenizer, load_policy, shard  # noqa: E402
from hpc_ppo.rank_env import resolve_rank_env  # noqa: E402
from hpc_ppo.rollout.base import SamplingSpec  # noqa: E402
from hpc_ppo.rollout.make import make_engine  # noqa: E402

TEMPERATURE = 0.7


def main(model_dir: str, work: Path, out: Path) -> None:
    results: dict = {}
    section = recorder(results, out)

    env = resolve_rank_env()
    device = pick_device("cuda", env.local_rank)
    init_distributed(env, device)
    results["rank"], results["device"] = env.rank, str(device)
    cfg = load_config(
        None,
        [
            f"model.path={model_dir}",
            "rollout.engine=vllm",
            "trainer.device=cuda",
            "trainer.nprocs=2",
            "rollout.tp=2",
            f"trainer.output_dir={work}",
            "rollout.enforce_eager=true",
            "rollout.gpu_memory_utilization=0.3",
            "data.max_prompt_tokens=32",
            "rollout.max_new_tokens=64",
        ],
    )
    tok = build_tokenizer(cfg.model)
    with section("init") as r:
        engine = make_engine(cfg, tok, device, work / "run")
        r["allreduce"] = engine.allreduce
    policy = shard(load_policy(cfg.model, tok, 0), device, mixed_bf16=True)
    params = list(policy.parameters())
    rng = np.random.default_rng(0)  # the same prompts on both ranks
    prompts = [rng.integers(3, 1000, size=int(k)).tolist() for k in rng.integers(4, 33, size=32)]
    spec = SamplingSpec(n=2, temperature=TEMPERATURE, top_p=1.0, max_new_tokens=64, seed=99)

    def cycle() -> dict:
        return cycle_times(engine, policy)

    def gap(samples) -> dict:
        return logprob_gap(samples, tok.pad_token_id, policy, device, TEMPERATURE)

    with section("first_cycle") as r:
        r.update(cycle())
        s0 = engine.generate(prompts, spec)
        mine = [s.response_ids for s in s0]
        both: list = [None, None]
        dist.all_gather_object(both, mine)
        r["samples"] = len(s0)
        r["identical_fraction"] = sum(a == b for a, b in zip(*both, strict=True)) / len(s0)
        r["gap"] = gap(s0)

    with section("pushed_perturbed") as r:
        initial = [p.to_local().detach().clone() for p in params]
        gen = torch.Generator(device=device).manual_seed(7 + env.rank)
        with torch.no_grad():
            for p in params:
                local = p.to_local()
                local.add_(0.02 * torch.randn(local.shape, generator=gen, device=device))
        r.update(timed_sleep(engine))
        r.update(cycle())
        s1 = engine.generate(prompts, spec)
        r["gap"] = gap(s1)
        with torch.no_grad():
            for p, w in zip(params, initial, strict=True):
                p.to_local().copy_(w)
        reshard(policy)  # else the FSDP forward reuses its unsharded root (the perturbed one)
        r["gap_vs_stale_weights"] = gap(s1)

    results["done"] = True
    out.write_text(json.dumps(results, indent=1, default=float))
    engine.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python tests/gpu/tp_checks.py MODEL_DIR WORK_DIR OUT_PREFIX")
    rank = resolve_rank_env().rank
    main(sys.argv[1], Path(sys.argv[2]).resolve(), Path(f"{sys.argv[3]}.rank{rank}.json"))
    sys.stdout.flush()
    import os

    os._exit(0)  # skip vLLM / NCCL teardown at interpreter exit
