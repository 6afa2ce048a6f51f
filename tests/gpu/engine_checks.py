"""In-rank vLLM checks in one fresh process; tests/gpu/test_vllm_engine.py runs it, reads the JSON.

    python tests/gpu/engine_checks.py MODEL_DIR WORK_DIR OUT.json

A separate process because one vLLM engine cannot be torn down and rebuilt cleanly in a
process, and because vLLM re-seeds and sets process-wide torch flags that must not leak into
pytest. The rank environment comes from the caller (the test passes a Slurm task bound to one
GPU), and goes through the same resolve_rank_env -> pick_device -> init_distributed as a rank.
Each section records its numbers, or its traceback, and the JSON is rewritten after each one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hpc_ppo.batch import (  # noqa: E402
    MicroBatching,
    collate,
    forward_all,
    plan_micro_batches,
    policy_forward,
)
from hpc_ppo.config import load_config  # noqa: E402
from hpc_ppo.dist import init_distributed, pick_device  # noqa: E402
from hpc_ppo.errors import ConfigError  # noqa: E402
from hpc_ppo.model import build_tokenizer, full_state_iter, load_policy, shard  # noqa: E402
from hpc_ppo.rank_env import resolve_rank_env  # noqa: E402
from hpc_ppo.rollout.base import SamplingSpec  # noqa: E402
from hpc_ppo.rollout.make import make_engine  # noqa: E402

TEMPERATURE = 0.7  # not 1: the returned logprobs must be the processed (tempered) ones


def recorder(results: dict, out: Path):
    """`with section(name) as r:` records r, ok / the error, and seconds, then writes `out`."""

    @contextlib.contextmanager
    def section(name: str):
        start = time.perf_counter()
        try:
            yield results.setdefault(name, {})
            results[name]["ok"] = True
        except Exception:
            results[name]["ok"] = False
            results[name]["error"] = traceback.format_exc()[-3000:]
        results[name]["seconds"] = round(time.perf_counter() - start, 3)
        out.write_text(json.dumps(results, indent=1, default=float))

    return section


def timed_sleep(engine) -> dict:
    """Put the engine to sleep; the seconds it took and the GiB it gave back."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.sleep()
    torch.cuda.synchronize()
    return {
        "sleep_s": round(time.perf_counter() - t0, 4),
        "slept_gib": round(engine.slept_bytes / 1024**3, 2),
    }


def cycle_times(engine, policy) -> dict:
    """Seconds of wake_weights, push (bf16, as the trainer pushes) and wake_cache."""
    times = {}
    for name, fn in (
        ("wake_weights", engine.wake_weights),
        ("push", lambda: engine.push_weights(full_state_iter(policy, torch.bfloat16))),
        ("wake_cache", engine.wake_cache),
    ):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times[name + "_s"] = round(time.perf_counter() - t0, 4)
    return times


def reshard(model) -> None:
    """After shards are edited in place: FSDP2 keeps the root unsharded after a forward without
    backward, and its next forward would reuse that copy of the old values."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def logprob_gap(samples, pad_id: int, policy, device, temperature: float) -> dict:
    """|engine logprob - FSDP logprob| over response tokens, FSDP as the trainer runs it."""
    batch = collate(samples, [0.0] * len(samples), pad_id).to(device)
    plan = plan_micro_batches(batch, MicroBatching(max_rows=32))
    fsdp = forward_all(policy_forward, policy, batch, plan, temperature=temperature)
    mask = batch["response_mask"].bool()
    d = (batch["engine_logprobs"] - fsdp).abs()[mask].float()
    return {
        "tokens": int(mask.sum()),
        "mean": float(d.mean()),
        "median": float(d.median()),
        "p99": float(torch.quantile(d, 0.99)),
        "max": float(d.max()),
        "mean_fsdp_logprob": float(fsdp[mask].mean()),
    }


def main(model_dir: str, work: Path, out: Path) -> None:
    results: dict = {}

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=float))

    section = recorder(results, out)

    env = resolve_rank_env()
    device = pick_device("cuda", env.local_rank)
    init_distributed(env, device)
    results["rank_env"] = dataclasses.asdict(env)
    results["device"] = {
        "device": str(device),
        "current_device": torch.cuda.current_device(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": torch.cuda.device_count(),
        "name": torch.cuda.get_device_name(device),
    }
    overrides = [
        f"model.path={model_dir}",
        "rollout.engine=vllm",
        "trainer.device=cuda",
        f"trainer.output_dir={work}",
        "rollout.enforce_eager=true",
        "rollout.gpu_memory_utilization=0.3",
        "data.max_prompt_tokens=32",
        "rollout.max_new_tokens=64",
    ]
    cfg = load_config(None, overrides)
    tok = build_tokenizer(cfg.model)
    start = time.perf_counter()
    engine = make_engine(cfg, tok, device, work / "run")
    results["init"] = {
        "seconds": round(time.perf_counter() - start, 1),
        "caches": engine.caches,
        "output_dir": str(work),
    }
    policy = shard(load_policy(cfg.model, tok, 0), device, mixed_bf16=True)
    params = list(policy.parameters())
    rng = np.random.default_rng(0)
    vocab = policy.config.vocab_size
    prompts = [rng.integers(3, vocab, size=int(k)).tolist() for k in rng.integers(4, 33, size=32)]
    spec = SamplingSpec(n=2, temperature=TEMPERATURE, top_p=1.0, max_new_tokens=64, seed=1234)
    save()

    def cycle() -> dict:
        return cycle_times(engine, policy)

    def gap(samples) -> dict:
        return logprob_gap(samples, tok.pad_token_id, policy, device, TEMPERATURE)

    with section("first_cycle") as r:  # the engine starts awake: the wakes are no-ops
        r.update(cycle())
        s0 = engine.generate(prompts, spec)
        r["gap"] = gap(s0)
        by_prompt = [s.prompt_index for s in s0]
        eos = tok.eos_token_id
        r["format"] = {
            "samples": len(s0),
            "grouped": by_prompt == [i for i in range(len(prompts)) for _ in range(spec.n)],
            "prompt_ids_kept": all(s.prompt_ids == prompts[s.prompt_index] for s in s0),
            "logprob_lengths_match": all(len(s.logprobs) == len(s.response_ids) for s in s0),
            "finished": sum(s.finished for s in s0),
            "finished_end_with_eos": all(s.response_ids[-1] == eos for s in s0 if s.finished),
            "no_eos_inside": all(eos not in s.response_ids[:-1] for s in s0),
            "unfinished_full_length": all(
                len(s.response_ids) == spec.max_new_tokens for s in s0 if not s.finished
            ),
            "logprobs_nonpositive": all(lp <= 1e-4 for s in s0 for lp in s.logprobs),
        }
        # Same seeds, same batch, empty prefix cache (as after a restart): same samples. The
        # fraction is recorded, since a near-tie can flip under different kernel tiling.
        engine.wake_cache()
        again = engine.generate(prompts, spec)
        r["same_seed_same_tokens"] = sum(
            a.response_ids == b.response_ids for a, b in zip(s0, again, strict=True)
        ) / len(s0)
        other = engine.generate(prompts, dataclasses.replace(spec, seed=spec.seed + 1))
        r["other_seed_other_tokens"] = [a.response_ids for a in s0] != [
            b.response_ids for b in other
        ]

    with section("pushed_perturbed") as r:
        # "Trained" weights: every parameter moved by N(0, 0.02^2), the scale of its init.
        initial = [p.to_local().detach().clone() for p in params]
        gen = torch.Generator(device=device).manual_seed(7)
        with torch.no_grad():
            for p in params:
                local = p.to_local()
                local.add_(
                    0.02 * torch.randn(local.shape, generator=gen, device=device, dtype=local.dtype)
                )
        r.update(timed_sleep(engine))
        r.update(cycle())
        s1 = engine.generate(prompts, spec)
        r["gap"] = gap(s1)
        trained = [p.to_local().detach().clone() for p in params]
        with torch.no_grad():  # what a push that silently failed would look like
            for p, w in zip(params, initial, strict=True):
                p.to_local().copy_(w)
        reshard(policy)
        r["gap_vs_stale_weights"] = gap(s1)
        with torch.no_grad():
            for p, w in zip(params, trained, strict=True):
                p.to_local().copy_(w)
        reshard(policy)
        del initial, trained

    with section("wake_refused") as r:  # training holds too much for vLLM to wake up
        engine.sleep()
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(device)[0]
        hog = torch.empty(free - engine.slept_bytes // 2, dtype=torch.uint8, device=device)
        try:
            engine.wake_weights()
            r["raised"] = False
        except RuntimeError as e:
            r["raised"], r["message"] = True, str(e)
        del hog
        torch.cuda.empty_cache()
        r.update(cycle())
        r["generates_after"] = len(engine.generate(prompts[:4], spec)) == 4 * spec.n

    with section("start_refused") as r:  # this process already holds vLLM + FSDP memory
        hi = load_config(None, [*overrides, "rollout.gpu_memory_utilization=0.95"])
        try:
            make_engine(hi, tok, device, work / "run-hi")
            r["raised"] = False
        except RuntimeError as e:
            r["raised"], r["message"] = True, str(e)

    with section("tp_refused") as r:
        try:
            load_config(None, [*overrides, "rollout.tp=2"], launcher="local")
            r["config_raised"] = False
        except ConfigError as e:
            r["config_raised"], r["config_message"] = True, str(e)
        tp2 = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, tp=2))
        try:
            make_engine(tp2, tok, device, work / "run-tp2")
            r["engine_raised"] = False
        except ValueError as e:
            r["engine_raised"], r["engine_message"] = True, str(e)

    results["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    results["done"] = True
    save()
    engine.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python tests/gpu/engine_checks.py MODEL_DIR WORK_DIR OUT.json")
    main(sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve())
    sys.stdout.flush()
    os._exit(0)  # skip vLLM / NCCL teardown at interpreter exit: the checks are written
