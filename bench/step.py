"""One PPO/GRPO step's breakdown and the actor update's MFU, through `hpc-ppo run`.

    python bench/step.py --shape 0.5b                 # GPU: in-rank vLLM, 32 prompts x 8 x 512
    python bench/step.py --shape 7b --layers 8        # 7B layer shape, fewer layers (memory)
    python bench/step.py --shape tiny --device cpu    # the CPU default, to try the script

Prints one JSON object: medians over the steps after the first (which pays for JIT and
compile) of every `time/*` phase (push, generate, sleep, old_logprob, ref, values, update,
update_actor, update_critic, save), the final checkpoint's save seconds, tokens per step and
the actor update's model FLOPs utilisation:

    MFU = ppo_epochs x tokens x (6 N + 12 L d S) / (time/update_actor x peak x ranks)

with N the parameters outside the input embedding, L layers, d width, S the mean sequence
length (the attention term of a causal model, forward + backward). Simplifications: random
weights; `--layers` shortens the 7B shape so policy, optimizer and vLLM fit one GPU, which
keeps the per-layer work (and so MFU) of the full model but not its memory pressure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHAPES = {
    "0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


def write_model(shape: str, layers: int | None, out: Path) -> Path:
    """An HF directory of the shape with random bf16 weights and the tiny char tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hpc_ppo.model import tiny_tokenizer

    conf = dict(
        SHAPES[shape], max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6
    )
    if layers:
        conf["num_hidden_layers"] = layers
    tok = tiny_tokenizer()
    config = Qwen2Config(**conf, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def param_counts(cfg: dict) -> tuple[int, int, int]:
    """(N without input embedding, layers, width) from the config."""
    h, i, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = h // heads
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * i
    lm_head = cfg["vocab_size"] * h  # tied or not, the output projection is a matmul
    return n_layers * (attn + mlp) + lm_head, n_layers, h


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["tiny", "0.5b", "7b"], default="0.5b")
    p.add_argument("--layers", type=int, default=None, help="override the layer count")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 dense peak per GPU")
    p.add_argument("--out", type=Path, default=None, help="where models and runs go")
    p.add_argument("overrides", nargs="*", help="extra key=value for hpc-ppo run")
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="hpcppo-step-"))
    config = REPO / ("configs/tiny-cpu.yaml" if a.shape == "tiny" else "configs/gpu-step.yaml")
    overrides = [
        f"trainer.total_steps={a.steps}",
        f"trainer.output_dir={out / 'runs'}",
        f"trainer.device={a.device}",
    ]
    if a.shape == "tiny":
        from hpc_ppo.config import load_config

        t = load_config(config).model.tiny
        shape = dict(
            vocab_size=64,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
        )
    else:
        model_dir = out / f"model-{a.shape}-{a.layers or 'full'}"
        if not (model_dir / "config.json").is_file():
            write_model(a.shape, a.layers, model_dir)
        shape = json.loads((model_dir / "config.json").read_text())
        overrides.append(f"model.path={model_dir}")
    cmd = [sys.executable, "-m", "hpc_ppo.cli", "run", str(config), *overrides, *a.overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-5000:])
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resolved = json.loads(
        json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    )
    warm = rows[1:] or rows
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
    print(
        json.dumps(
            {
                "bench": "step",
                "shape": a.shape,
                "layers": layers,
                "params_matmul": n,
                "steps": a.steps,
                "wall_s": round(wall, 1),
                "first_step_s": round(rows[0]["time/step"], 2),
                "median": med,
                "final_save_s": round(rows[-1].get("time/save", float("nan")), 2),
                "tokens_per_step": tokens,
                "mean_seq_len": round(seq, 1),
                "actor_mfu": round(mfu, 4),
                "peak_tflops": a.peak_tflops,
                "reward_mean_last": rows[-1]["reward/mean"],
                "logprob_gap_last": rows[-1]["actor/logprob_gap"],
                "run_dir": str(run_dir),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
