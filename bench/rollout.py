"""Rollout throughput: the in-rank engine (FSDP model resident) vs a standalone vllm.LLM.

    python bench/rollout.py                       # 0.5B shape, 256 prompts x 64 in, 512 out
    python bench/rollout.py --modes inrank standalone standalone-inproc --deadline-s 560
    python bench/rollout.py --shape 7b --dtype bfloat16 --modes inrank --cycles 3 \
        --prompts 32 --max-new 64          # Qwen2.5-7B shape: push / sleep / wake times

Prints one JSON object. Each mode runs in a fresh process, one after the other, on the same
GPU, model directory (a Qwen2.5-0.5B-shaped model with random weights, written once), prompts
and per-request sampling seeds:

- inrank: what the trainer runs. The FSDP2 policy (kept resident), then VLLMEngine
  (external_launcher), a small warm-up and a first full-size generation (tok_per_s_before_cycle),
  then a sleep -> wake_weights -> push -> wake_cache cycle (each timed), then the timed
  generation (tok_per_s). inrank-nogc: the same with Python's GC off during that generation.
- standalone: vllm.LLM with its default executor (engine core in its own process), weights
  loaded from the same directory, a small warm-up, a first full-size generation
  (tok_per_s_first), then the timed generation (tok_per_s).
- standalone-inproc: the same with VLLM_ENABLE_V1_MULTIPROCESSING=0, the one thing that
  external_launcher forces.

Compare second full-size runs: the first one in a process with a cold cache folder paid for
kernel JIT (measured: 23.1k vs 32.8k tok/s, docs/PERFORMANCE.md "GPU (H100)").
Simplification: one rank (tp=1); tok/s counts generated tokens only. `--shape 7b` is
Qwen2.5-7B's shape (28 layers, 3584 wide, untied 152,064-token embeddings); `--dtype bfloat16`
keeps the resident FSDP copy in bf16 (fp32 would hold 30 GiB), which leaves the push without
its fp32 -> bf16 cast. `--cycles K` repeats the sleep/wake/push cycle K times (first cycle's
figures as before, medians in cycle_medians).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QWEN05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
QWEN7B = dict(
    QWEN05B,
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
SHAPES = {"0.5b": QWEN05B, "7b": QWEN7B}


def write_model_dir(
    out: Path, seed: int = 0, shape: str = "0.5b", layers: int | None = None
) -> Path:
    """A Qwen2.5-0.5B-shaped (or `shape`) HF directory: random bf16 weights, tiny tokenizer.
    `layers` shortens the model (bench/step.py's 7B shape on one GPU).

    The tokenizer's ids (< 64) are valid ids of the 151,936-token vocabulary, which is all
    the tests and the bench need from it. Written once; an existing complete one is reused.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from hpc_ppo.model import tiny_tokenizer

    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    tok = tiny_tokenizer()
    conf = Qwen2Config(
        **{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})},
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tmp.rename(out)  # complete or absent, never half-written
    return out


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(n, length)).tolist()


# ------------------------------------------------------------------ one mode per process


def _overrides(a: argparse.Namespace) -> list[str]:
    return [
        f"model.path={a.model_dir}",
        "rollout.engine=vllm",
        "trainer.device=cuda",
        f"trainer.output_dir={a.work_dir}",
        f"rollout.max_new_tokens={a.max_new}",
        f"data.max_prompt_tokens={a.prompt_len}",
        f"rollout.gpu_memory_utilization={a.util}",
        f"rollout.enforce_eager={str(a.eager).lower()}",
        f"model.dtype={a.dtype}",
        f"rollout.tp={a.tp}",
        f"trainer.nprocs={a.tp}",
        "rollout.cudagraph_max_batch=512",  # its batches are --prompts, not a training step's
    ]  # sampling comes from the bench's own SamplingSpec, not from the config


def _timed(fn) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run_inrank(a: argparse.Namespace) -> dict:
    import torch

    from hpc_ppo.config import load_config
    from hpc_ppo.dist import init_distributed, pick_device
    from hpc_ppo.model import build_tokenizer, full_state_iter, load_policy, shard
    from hpc_ppo.rank_env import resolve_rank_env
    from hpc_ppo.rollout.base import SamplingSpec
    from hpc_ppo.rollout.make import make_engine

    env = resolve_rank_env()
    device = pick_device("cuda", env.local_rank)
    init_distributed(env, device)
    cfg = load_config(None, _overrides(a))
    tok = build_tokenizer(cfg.model)
    policy = shard(load_policy(cfg.model, tok, 0), device, mixed_bf16=True)  # resident from here on
    t0 = time.perf_counter()
    engine = make_engine(cfg, tok, device, Path(a.work_dir) / "bench-run")
    init_s = time.perf_counter() - t0
    bf16 = torch.bfloat16
    engine.push_weights(full_state_iter(policy, bf16))
    engine.wake_cache()
    prompts = make_prompts(a.prompts, a.prompt_len, SHAPES[a.shape]["vocab_size"], a.seed)
    prompts = prompts[env.rank :: env.world_size]  # a TP group gathers its ranks' prompts
    spec = SamplingSpec(1, 1.0, 1.0, a.max_new, seed=a.seed)
    engine.generate(prompts[:16], SamplingSpec(1, 1.0, 1.0, 16, seed=a.seed + 1))  # warm-up
    before = _timed(lambda: engine.generate(prompts, spec))  # no sleep/wake cycle yet

    def one_cycle() -> dict:
        return {
            "sleep_s": _timed(engine.sleep),
            "wake_weights_s": _timed(engine.wake_weights),
            "push_s": _timed(lambda: engine.push_weights(full_state_iter(policy, bf16))),
            "wake_cache_s": _timed(engine.wake_cache),
        }

    cycles = [one_cycle() for _ in range(max(1, a.cycles))]
    cycle = cycles[0]
    medians = {k: round(statistics.median(c[k] for c in cycles), 4) for k in cycle}
    samples = []
    if a.mode == "inrank-nogc":  # is it Python's GC walking the trainer's large heap?
        gc.collect()
        gc.disable()
    gen_s = _timed(lambda: samples.extend(engine.generate(prompts, spec)))
    gc.enable()
    from hpc_ppo import dist as hdist

    tokens, n = hdist.all_reduce([sum(len(s.response_ids) for s in samples), len(samples)], "sum")
    return {
        "tp": a.tp,
        "response_len_mean": round(tokens / max(n, 1), 1),
        "mode": a.mode,
        "gc_objects": len(gc.get_objects()),
        "tok_per_s_before_cycle": round(tokens / before, 1),
        "init_s": round(init_s, 1),
        **{k: round(v, 4) for k, v in cycle.items()},
        "slept_gib": round(engine.slept_bytes / 1024**3, 2),
        **({"cycle_medians": medians, "cycles": len(cycles)} if len(cycles) > 1 else {}),
        "generate_s": round(gen_s, 3),
        "tokens": tokens,
        "tok_per_s": round(tokens / gen_s, 1),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
    }


def run_standalone(a: argparse.Namespace) -> dict:
    import torch

    from hpc_ppo.config import load_config
    from hpc_ppo.model import build_tokenizer
    from hpc_ppo.rollout.base import SamplingSpec
    from hpc_ppo.rollout.vllm_engine import cache_root, point_caches, sampling_params

    cfg = load_config(None, _overrides(a))
    point_caches(cache_root(cfg.rollout, Path(cfg.trainer.output_dir).resolve()))
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(
        model=a.model_dir,
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=0,
        gpu_memory_utilization=a.util,
        enforce_eager=a.eager,
        logprobs_mode="processed_logprobs",
        generation_config="vllm",
        max_model_len=a.prompt_len + a.max_new,
    )
    init_s = time.perf_counter() - t0
    eos = build_tokenizer(cfg.model).eos_token_id
    prompts = make_prompts(a.prompts, a.prompt_len, SHAPES[a.shape]["vocab_size"], a.seed)

    def gen(batch: list[list[int]], spec: SamplingSpec) -> list:
        requests = [{"prompt_token_ids": p} for p in batch]
        params = [sampling_params(spec, i, eos) for i in range(len(batch))]
        return llm.generate(requests, params, use_tqdm=False)

    spec = SamplingSpec(1, 1.0, 1.0, a.max_new, seed=a.seed)
    gen(prompts[:16], SamplingSpec(1, 1.0, 1.0, 16, seed=a.seed + 1))  # warm-up
    t0 = time.perf_counter()
    gen(prompts, spec)  # the first full-size run pays for kernel JIT / autotuning
    first_s = time.perf_counter() - t0
    outs = []
    t0 = time.perf_counter()
    outs.extend(gen(prompts, spec))
    gen_s = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {
        "mode": a.mode,
        "tok_per_s_first": round(tokens / first_s, 1),
        "init_s": round(init_s, 1),
        "generate_s": round(gen_s, 3),
        "tokens": tokens,
        "tok_per_s": round(tokens / gen_s, 1),
        "multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0",
        "cuda_visible": torch.cuda.device_count(),
    }


# ------------------------------------------------------------------ driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--mode",
        default="driver",
        choices=["driver", "inrank", "inrank-nogc", "standalone", "standalone-inproc"],
    )
    p.add_argument("--modes", nargs="+", default=["inrank", "standalone"])
    p.add_argument("--model-dir", default=None, help="default: <work-dir>/qwen2.5-<shape>-shape")
    p.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--cycles", type=int, default=1, help="sleep/wake/push cycles to time")
    p.add_argument("--work-dir", default="runs/bench")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-new", type=int, default=512)
    p.add_argument("--util", type=float, default=0.5)
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--tp", type=int, default=1, help="inrank: TP size (that many ranks, GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--deadline-s",
        type=float,
        default=1e9,
        help="skip a mode that would start later than this after the driver started",
    )
    p.add_argument("--mode-timeout-s", type=float, default=420)
    a = p.parse_args()
    a.work_dir = str(Path(a.work_dir).resolve())
    default_dir = Path(a.work_dir) / f"qwen2.5-{a.shape}-shape"
    a.model_dir = str(Path(a.model_dir or default_dir).resolve())
    if a.mode.startswith("inrank"):
        result = run_inrank(a)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        sys.stdout.flush()
        os._exit(0)  # skip vLLM / NCCL teardown

    if a.mode.startswith("standalone"):
        print("RESULT " + json.dumps(run_standalone(a)), flush=True)
        return

    start = time.perf_counter()
    Path(a.work_dir).mkdir(parents=True, exist_ok=True)
    write_model_dir(Path(a.model_dir), shape=a.shape)
    results: dict = {
        "shape": f"Qwen2.5-{a.shape.upper()} (random weights)",
        "dtype": a.dtype,
        "prompts": a.prompts,
        "prompt_len": a.prompt_len,
        "max_new": a.max_new,
        "gpu_memory_utilization": a.util,
        "cuda_graphs": not a.eager,
    }
    passthrough = sys.argv[1:]
    for mode in a.modes:
        if time.perf_counter() - start > a.deadline_s:
            results[mode] = {"skipped": "deadline"}
            continue
        env = dict(os.environ)
        if mode == "standalone-inproc":
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cmd = [sys.executable, __file__, *passthrough, "--mode", mode, "--model-dir", a.model_dir]
        if mode.startswith("inrank") and a.tp > 1:  # one rank per GPU of the TP group
            launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={a.tp}"]
            cmd = [*launcher, *cmd[1:]]
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=a.mode_timeout_s
            )
            out = proc.stdout + proc.stderr
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            results[mode] = (
                json.loads(lines[-1][7:])
                if lines
                else {"failed": proc.returncode, "log": out[-3000:]}
            )
        except subprocess.TimeoutExpired as e:
            results[mode] = {"failed": "timeout", "log": str(e.stdout or "")[-2000:]}
        print(f"# {mode}: {json.dumps(results[mode])[:300]}", file=sys.stderr, flush=True)
    ok = [m for m in ("inrank", "standalone") if "tok_per_s" in results.get(m, {})]
    if len(ok) == 2:
        results["ratio_inrank_over_standalone"] = round(
            results["inrank"]["tok_per_s"] / results["standalone"]["tok_per_s"], 3
        )
    if "tok_per_s" in results.get("standalone-inproc", {}) and "standalone" in ok:
        results["ratio_inproc_over_standalone"] = round(
            results["standalone-inproc"]["tok_per_s"] / results["standalone"]["tok_per_s"], 3
        )
    results["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
