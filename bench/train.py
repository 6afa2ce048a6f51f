"""The training side of a step, without the rollout engine: scoring passes and the update,
timed for several configurations in one process.

    python bench/train.py --shape 0.5b \
        --variant "trainer.padding_free=false" \
        --variant "trainer.padding_free=true" \
        --variant "trainer.padding_free=true trainer.micro_batch_size=32 trainer.max_tokens_per_micro_batch=32768"
    python bench/train.py --shape 0.5b --lengths 32:512 --variant ... --profile 0  # + op table
    python bench/train.py --shape tiny --device cpu --variant "" --variant "trainer.padding_free=true"

bench/step.py measures a whole step through `hpc-ppo run`, a minute of engine start-up per
configuration; this builds the models of configs/gpu-step.yaml (0.5B shape: the step bench's
workload; tiny: the CPU default) once per variant and runs the trainer's own stages on a
synthetic batch: old log-probs (and reference log-probs and values where the config has them,
e.g. `algo.name=ppo`), advantages, then `Optimization.run`, `--iters` times (the first is a
warm-up). The batch: `--prompts` x rollout.n rows, prompts of `--prompt-len` tokens, each
prompt's responses `--lengths LO:HI` tokens long (uniform per prompt, as rollout.forced_lengths).

Prints one JSON object: per variant the median seconds of each stage, tokens computed vs real
(padding), training tokens/s, the actor update's MFU (bench/step.py's formula), peak GPU
memory, and the largest |old log-prob - the first variant's| over response tokens in the
first iteration, before any update (padded and packed passes must agree). `--profile I` runs
variant I once more under torch.profiler: an operator table and a trace under --out
(hpc_ppo/profiling.py), left out of the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the sys.path line)
import torch.distributed as dist  # noqa: E402

from bench.rollout import write_model_dir  # noqa: E402
from bench.step import lengths_arg, param_counts  # noqa: E402
from hpc_ppo.advantages import compute_advantages  # noqa: E402
from hpc_ppo.batch import collate, computed_tokens, plan_micro_batches  # noqa: E402
from hpc_ppo.config import load_config  # noqa: E402
from hpc_ppo.dist import init_distributed, pick_device  # noqa: E402
from hpc_ppo.logprobs import old_ref_logprobs_and_values  # noqa: E402
from hpc_ppo.metrics import PhaseTimer  # noqa: E402
from hpc_ppo.model import build_models, build_tokenizer  # noqa: E402
from hpc_ppo.profiling import profiled  # noqa: E402
from hpc_ppo.rank_env import resolve_rank_env  # noqa: E402
from hpc_ppo.rollout.base import Sample  # noqa: E402
from hpc_ppo.trainer import make_optimization  # noqa: E402

STAGES = ("old_logprob", "ref", "values", "advantages", "update", "update_actor", "update_critic")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["tiny", "0.5b", "7b"], default="0.5b")
    p.add_argument("--layers", type=int, default=None, help="override the layer count")
    p.add_argument("--device", default="cuda")
    p.add_argument("--prompts", type=int, default=None, help="default: trainer.batch_size")
    p.add_argument("--prompt-len", type=int, default=10, help="tokens per prompt")
    p.add_argument(
        "--lengths",
        type=lengths_arg,
        default=None,
        metavar="LO:HI",
        help="response lengths (default: rollout.max_new_tokens for every row)",
    )
    p.add_argument("--iters", type=int, default=3, help="repeats per variant, the first a warm-up")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="'KEY=VALUE ...'",
        help="overrides of one configuration (repeat the flag for more; '' = as is)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="I",
        help="variant I (0: the first) runs one more iteration, under torch.profiler",
    )
    p.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 dense peak per GPU")
    p.add_argument("--out", type=Path, default=None, help="model folder and profiles")
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="hpcppo-train-"))
    base = [f"trainer.device={a.device}"]
    if a.shape == "tiny":
        config = REPO / "configs/tiny-cpu.yaml"
    else:
        config = REPO / "configs/gpu-step.yaml"
        model_dir = out / f"model-{a.shape}-{a.layers or 'full'}"
        if not (model_dir / "config.json").is_file():
            write_model_dir(model_dir, shape=a.shape, layers=a.layers)
        base.append(f"model.path={model_dir}")
    env = resolve_rank_env({})
    device = pick_device(a.device, env.local_rank)
    init_distributed(env, device)
    try:
        results, first = [], None
        for i, variant in enumerate(a.variant or [""]):
            cfg = load_config(str(config), [*base, *variant.split()])
            profile = out / f"profile-{i}" if a.profile == i else None
            r, logprobs = measure(cfg, device, a, profile)
            if first is None:
                first = logprobs
            r["variant"] = variant
            r["max_logprob_diff_vs_first"] = float((logprobs - first).abs().max())
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        dist.destroy_process_group()
    print(json.dumps({"bench": "train", "shape": a.shape, "variants": results}, indent=1))


def synthetic_samples(
    prompts: int, n: int, prompt_len: int, lengths: tuple[int, int], vocab: int, seed: int
) -> tuple[list[Sample], list[float]]:
    """`prompts` x `n` samples with random tokens below `vocab` (the bench tokenizer's ids),
    each prompt's responses one length from `lengths`, and random 0/1 rewards."""
    rng = random.Random(seed)
    samples, scores = [], []
    for i in range(prompts):
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        length = rng.randint(*lengths)
        for _ in range(n):
            resp = [rng.randrange(3, vocab) for _ in range(length)]
            samples.append(Sample(i, prompt, resp, [-1.0] * length, False))
            scores.append(float(rng.random() < 0.5))
    return samples, scores


def measure(cfg, device: torch.device, a: argparse.Namespace, profile_dir: Path | None):
    """One variant: its models, `a.iters` scoring + update passes (and one more under the
    profiler with a `profile_dir`); (figures, old log-probs of the first iteration)."""
    t, r = cfg.trainer, cfg.rollout
    tokenizer = build_tokenizer(cfg.model)
    models = build_models(
        cfg.model, tokenizer, t.seed, device, cfg.algo.kl_coef > 0, cfg.algo.name == "ppo"
    )
    optim = make_optimization(cfg, models, device, a.iters + 1)
    micro = optim.micro
    lengths = a.lengths or (r.max_new_tokens, r.max_new_tokens)
    vocab = min(64, len(tokenizer))
    samples, scores = synthetic_samples(
        a.prompts or t.batch_size, r.n, a.prompt_len, lengths, vocab, t.seed
    )
    times: list[dict[str, float]] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for it in range(a.iters + (profile_dir is not None)):
        batch = collate(samples, scores, tokenizer.pad_token_id).to(device)
        timer = PhaseTimer()
        with profiled(it == a.iters, profile_dir or Path(), it, 0):
            plan = plan_micro_batches(batch, micro)
            old_ref_logprobs_and_values(models, batch, plan, r.temperature, timer)
            with timer("advantages"):
                compute_advantages(cfg.algo, r.n, batch)
            if it == 0:  # before any update: every variant scores the same weights
                logprobs = (batch["old_logprobs"] * batch["response_mask"]).float().cpu()
            with timer("update"):
                stats = optim.run(batch, t.seed + it)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        times.append(
            {**timer.seconds, **{k[5:]: v for k, v in stats.items() if k.startswith("time/")}}
        )
    warm = times[1 : a.iters] or times[:1]  # not the warm-up, not the profiled one
    med = {k: round(statistics.median(x[k] for x in warm), 4) for k in STAGES if k in warm[0]}
    real = int(batch["attention_mask"].sum())
    computed = computed_tokens(batch, plan)
    train_s = sum(med.get(k, 0.0) for k in ("old_logprob", "ref", "values", "update"))
    shape = models.policy.config.to_dict()
    n_params, layers, width = param_counts(shape)
    seq = real / len(samples)
    flops = cfg.algo.ppo_epochs * real * (6 * n_params + 12 * layers * width * seq)
    result = {
        "median_s": med,
        "rows": len(samples),
        "micro_batches": len(plan),
        "padding_free": micro.padding_free,
        "attn_implementation": models.policy.config._attn_implementation,
        "real_tokens": real,
        "computed_tokens": computed,
        "train_tokens_per_s": round(real / max(train_s, 1e-9), 1),
        "actor_mfu": round(flops / (med["update_actor"] * a.peak_tflops * 1e12), 4)
        if device.type == "cuda"
        else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "profile": str(profile_dir / f"step_{a.iters}.rank0.txt") if profile_dir else None,
    }
    del models, optim, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result, logprobs


if __name__ == "__main__":
    main()
