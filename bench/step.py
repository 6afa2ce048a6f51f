"""One PPO/GRPO step's breakdown and the actor update's MFU, through `hpc-ppo run`.

    python bench/step.py --shape 0.5b                 # GPU: in-rank vLLM, 32 prompts x 8 x 512
    python bench/step.py --shape 7b --layers 16 model.dtype=bfloat16 ...  # 7B layer shape
                                                      # (configs/gpu-step.yaml has the rest)
    python bench/step.py --shape tiny --device cpu    # the CPU default, to try the script
    python bench/step.py --resume RUN_DIR --steps 2   # the requeue path: continue a run's
                                                      # checkpoint for 2 more steps (warm start)
    python bench/step.py --shape 0.5b --lengths 32:512 --compare-padding   # variable lengths:
                                                      # padded vs padding-free tokens/s

Prints one JSON object: medians over the steps after the first (which pays for JIT and
compile) of every `time/*` phase (push, generate, sleep, old_logprob, ref, values, update,
update_actor, update_critic, save), the final checkpoint's save seconds, tokens per step and
the actor update's model FLOPs utilisation, training tokens/s (real tokens over the scoring
passes and the update: what padding-free micro-batches speed up), and start-up figures:

- launch_to_first_step_s: from starting `hpc-ppo run` to the first step's metrics line (its
  `time`; a save at that step is included, see first_step_save_s), i.e. what a requeued job
  pays before training again;
- engine_start_s: from vLLM's first log line ("Initializing a V1 LLM engine") to its "init
  engine ... took" line (both timestamped as they arrive), plus vLLM's own figure;
- between_steps_s: per step after the first, the wall time between two metrics lines minus
  that step's `time/step`: what saving (sync, or an async save's staging plus any wait for
  the previous one) and logging cost training;
- save_s_by_step: `time/save` by metrics step k (the save of checkpoint step_{k+1}); for an
  async save the seconds it blocked, without the wait for the previous write.

    MFU = ppo_epochs x tokens x (6 N + 12 L d S) / (time/update_actor x peak x ranks)

with N the parameters outside the input embedding, L layers, d width, S the mean sequence
length (the attention term of a causal model, forward + backward). Simplifications: random
weights; `--layers` shortens the 7B shape so policy, optimizer and vLLM fit one GPU: the
per-layer work is the full model's, but the vocabulary-side work (output projection, fp32
logprobs) weighs more in fewer layers, so MFU reads somewhat low, and memory pressure is lower.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.rollout import write_model_dir  # noqa: E402  (after the sys.path line)


def param_counts(cfg: dict) -> tuple[int, int, int]:
    """(N without input embedding, layers, width) from the config."""
    h, i, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = h // heads
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * i
    lm_head = cfg["vocab_size"] * h  # tied or not, the output projection is a matmul
    return n_layers * (attn + mlp) + lm_head, n_layers, h


# Log lines whose arrival time is recorded (first occurrence), by name.
MARKS = {
    "engine_begin": re.compile(r"Initializing a V1 LLM engine"),
    "engine_ready": re.compile(r"init engine .* took"),
    "resumed": re.compile(r"resumed from "),
}
# Figures read from log lines (first occurrence), one per named group. vLLM's wording moves
# between versions: 0.26 says "took 46.78 s" where older ones said "took 46.78 seconds".
FIGURES = [
    re.compile(r"init engine .* took (?P<vllm_init_engine_s>[0-9.]+) s"),
    re.compile(r"torch\.compile (?:takes|took) (?P<vllm_compile_s>[0-9.]+) s in total"),
    re.compile(r"Graph capturing finished in (?P<vllm_graph_capture_s>[0-9.]+) sec"),
    re.compile(r"Model loading took (?P<vllm_weights_gib>[0-9.]+) GiB"),
    re.compile(r"Available KV cache memory: (?P<vllm_kv_cache_gib>[0-9.]+) GiB"),
    re.compile(  # rollout/vllm_engine.py's split of the engine stage
        r"vLLM engine ready in (?P<engine_s>[0-9.]+) s: CUDA, groups and plans "
        r"(?P<engine_before_vllm_s>[0-9.]+), vLLM import (?P<engine_vllm_import_s>[0-9.]+), "
        r"LLM\(\) (?P<engine_llm_s>[0-9.]+)"
    ),
    re.compile(  # rollout/preload.py: the import beside the models and the restore
        r"vLLM imported in (?P<vllm_background_import_s>[0-9.]+) s beside .* "
        r"\((?P<vllm_import_waited_s>[0-9.]+) s waited\)"
    ),
    re.compile(  # tracking.py: MLflow's import and store, in the tracker's process
        r"MLflow imported and .* opened in (?P<mlflow_connect_s>[0-9.]+) s \(tracker process\)"
    ),
]


def run_logged(cmd: list[str], log_path: Path, timeout_s: float) -> tuple[int, float, dict, str]:
    """Run `cmd`, writing its merged output to `log_path` as it comes; returns (exit code,
    launch unix time, {mark: seconds after launch}, last lines of output)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    marks: dict[str, float] = {}
    figures: dict[str, float] = {}
    tail: list[str] = []
    launch = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )

    def pump() -> None:
        with open(log_path, "w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                now = time.perf_counter() - t0
                for name, rx in MARKS.items():
                    if name not in marks and rx.search(line):
                        marks[name] = round(now, 2)
                for rx in FIGURES:
                    m = rx.search(line)
                    for name, value in (m.groupdict() if m else {}).items():
                        figures.setdefault(name, float(value))
                tail.append(line)
                del tail[:-200]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher forwards it to the ranks, which save and exit
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        tail.append(f"bench/step.py: timed out after {timeout_s} s\n")
    reader.join(timeout=10)
    return code, launch, {**marks, **figures}, "".join(tail)


def shape_of(config_path: Path) -> dict:
    """The model's config.json fields that param_counts needs (built-in tiny model too)."""
    from hpc_ppo.config import BUILTIN_TINY_MODEL, load_config

    cfg = load_config(config_path)
    if cfg.model.path != BUILTIN_TINY_MODEL:
        return json.loads((Path(cfg.model.path) / "config.json").read_text())
    t = cfg.model.tiny
    return dict(
        vocab_size=64,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
    )


def completed_steps(run_dir: Path) -> int:
    from hpc_ppo import checkpoint as ckpt

    steps = ckpt.complete_steps(run_dir, warn=False)
    if not steps:
        sys.exit(f"{run_dir}: no complete checkpoint to resume")
    return steps[-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["tiny", "0.5b", "7b"], default="0.5b")
    p.add_argument("--layers", type=int, default=None, help="override the layer count")
    p.add_argument("--steps", type=int, default=4, help="steps to run (with --resume: more)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 dense peak per GPU")
    p.add_argument("--out", type=Path, default=None, help="where models and runs go")
    p.add_argument("--resume", type=Path, default=None, help="a run folder to continue")
    p.add_argument("--log", type=Path, default=None, help="the run's output (default: out/)")
    p.add_argument("--timeout-s", type=float, default=1e9)
    p.add_argument(
        "--lengths",
        type=lengths_arg,
        default=None,
        metavar="LO:HI",
        help="variable-length workload: each prompt's responses forced to a length drawn"
        " uniformly from [LO, HI] (rollout.forced_lengths)",
    )
    p.add_argument(
        "--compare-padding",
        action="store_true",
        help="run twice, padded then padding-free micro-batches (trainer.padding_free),"
        " and compare their training tokens/s",
    )
    p.add_argument("overrides", nargs="*", help="extra key=value for hpc-ppo run")
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="hpcppo-step-"))
    extra = list(a.overrides)
    if a.lengths is not None:
        lo, hi = a.lengths
        extra += [f"rollout.forced_lengths=[{lo},{hi}]", f"rollout.max_new_tokens={hi}"]
    if not a.compare_padding:
        print(json.dumps(measure(a, out, extra, a.log), indent=1), flush=True)
        return
    results = {}
    for padding_free in (False, True):
        log = None if a.log is None else a.log.with_suffix(f".padding_free_{padding_free}.log")
        results[padding_free] = measure(
            a, out, [*extra, f"trainer.padding_free={padding_free}"], log
        )
    padded, packed = results[False], results[True]
    summary = {
        "bench": "step_padding",
        "lengths": a.lengths,
        "train_tokens_per_s": {
            "padded": padded["train_tokens_per_s"],
            "packed": packed["train_tokens_per_s"],
        },
        "speedup": round(packed["train_tokens_per_s"] / padded["train_tokens_per_s"], 3),
        "padding_fraction_padded": padded["padding_fraction"],
        "padded": padded,
        "packed": packed,
    }
    print(json.dumps(summary, indent=1), flush=True)


def lengths_arg(text: str) -> tuple[int, int]:
    """`LO:HI` -> (LO, HI) with 1 <= LO <= HI."""
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO:HI, e.g. 32:512") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI, e.g. 32:512")
    return lo, hi


def measure(a: argparse.Namespace, out: Path, extra: list[str], log: Path | None) -> dict:
    """One `hpc-ppo run` (a new run, or `--resume`) and its figures."""
    first_new = 0
    if a.resume is not None:  # the requeue path: same run folder, its config and caches
        run_dir = a.resume.resolve()
        first_new = completed_steps(run_dir)
        cmd_args = [str(run_dir), f"trainer.total_steps={first_new + a.steps}", *extra]
        shape = shape_of(run_dir / "config.yaml")
    else:
        config = REPO / ("configs/tiny-cpu.yaml" if a.shape == "tiny" else "configs/gpu-step.yaml")
        overrides = [
            f"trainer.total_steps={a.steps}",
            f"trainer.output_dir={out / 'runs'}",
            f"trainer.device={a.device}",
        ]
        if a.shape == "tiny":
            shape = shape_of(config)
        else:
            model_dir = out / f"model-{a.shape}-{a.layers or 'full'}"
            if not (model_dir / "config.json").is_file():
                write_model_dir(model_dir, shape=a.shape, layers=a.layers)
            shape = json.loads((model_dir / "config.json").read_text())
            overrides.append(f"model.path={model_dir}")
        cmd_args = [str(config), *overrides, *extra]
    cmd = [sys.executable, "-m", "hpc_ppo.cli", "run", *cmd_args]
    log_path = log or out / f"step-{time.strftime('%H%M%S')}.log"
    code, launch, marks, tail = run_logged(cmd, log_path, a.timeout_s)
    wall = time.time() - launch
    if code != 0:
        sys.exit(f"hpc-ppo run exited {code} after {wall:.0f} s; log {log_path}\n{tail[-6000:]}")
    last = [ln for ln in tail.splitlines() if ln.startswith("run_dir: ")]
    run_dir = Path(last[-1].removeprefix("run_dir: "))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r and r["step"] >= first_new]
    resolved = json.loads(
        json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    )
    # Medians leave out the first step (JIT, first push) and profiled ones (profiler overhead).
    profiled = set(resolved["trainer"].get("profile_steps") or [])
    warm = [r for r in rows[1:] if r["step"] not in profiled] or rows
    med = {
        k: round(statistics.median(r[k] for r in warm if k in r), 4)
        for k in sorted({k for r in warm for k in r})
        if k.startswith("time/") and k != "time/save"
    }
    n, layers, width = param_counts(shape)
    tokens = statistics.median(r["perf/tokens"] for r in warm)
    seq = tokens / (resolved["trainer"]["batch_size"] * resolved["rollout"]["n"])
    flops = resolved["algo"]["ppo_epochs"] * tokens * (6 * n + 12 * layers * width * seq)
    ranks = resolved["trainer"]["nprocs"]
    mfu = flops / (med["time/update_actor"] * a.peak_tflops * 1e12 * ranks)
    # the passes padding affects: scoring (old log-probs, reference, values) and the update
    train_s = sum(med.get(f"time/{k}", 0.0) for k in ("old_logprob", "ref", "values", "update"))
    between = [
        round(b["time"] - a_["time"] - b["time/step"], 2)
        for a_, b in zip(rows, rows[1:], strict=False)
    ]
    engine = {}
    if "engine_begin" in marks and "engine_ready" in marks:
        engine["engine_start_s"] = round(marks["engine_ready"] - marks["engine_begin"], 1)
    return {
        "bench": "step",
        "shape": a.shape if a.resume is None else "resume",
        "layers": layers,
        "params_matmul": n,
        "dtype": resolved["model"]["dtype"],
        "cuda_graphs": not resolved["rollout"]["enforce_eager"],
        "padding_free": resolved["trainer"]["padding_free"],  # null: on a GPU only
        "forced_lengths": resolved["rollout"]["forced_lengths"],
        "steps": len(rows),
        "first_step": first_new,
        "wall_s": round(wall, 1),
        "launch_to_first_step_s": round(rows[0]["time"] - launch, 1),
        "first_step_s": round(rows[0]["time/step"], 2),
        "first_step_save_s": round(rows[0].get("time/save", 0.0), 2),
        # the process's start-up by phase (slowest rank), logged with its first step
        "startup_s": {
            k.removeprefix("startup/"): round(v, 1)
            for k, v in rows[0].items()
            if k.startswith("startup/")
        },
        **engine,
        "log_marks_s": marks,
        "median": med,
        "save_s_by_step": {r["step"]: round(r["time/save"], 2) for r in rows if "time/save" in r},
        "between_steps_s": between,
        "final_save_s": round(rows[-1].get("time/save", float("nan")), 2),
        "async_save": resolved["trainer"]["async_save"],
        "tokens_per_step": tokens,
        "mean_seq_len": round(seq, 1),
        "response_len_mean": round(statistics.median(r["response/length_mean"] for r in warm), 1),
        "gen_tokens_per_s": round(statistics.median(r["perf/gen_tokens_per_s"] for r in warm), 1),
        "train_tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        "padding_fraction": round(
            statistics.median(r.get("perf/padding_fraction", 0.0) for r in warm), 4
        ),
        "actor_mfu": round(mfu, 4),
        "peak_tflops": a.peak_tflops,
        "reward_mean_last": rows[-1]["reward/mean"],
        "logprob_gap_last": rows[-1]["actor/logprob_gap"],
        "run_dir": str(run_dir),
        "log": str(log_path),
        "profiled_steps": sorted(profiled),
        "profiles": [str(f) for f in sorted((run_dir / "profile").glob("*.txt"))],
    }


if __name__ == "__main__":
    main()
