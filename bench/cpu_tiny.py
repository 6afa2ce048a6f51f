"""Seconds per step and tokens/s of the embedded default on this CPU, for 1 and 2 ranks.

    python bench/cpu_tiny.py [--steps 20] [--nprocs 1 2] [key=value ...]

Runs `hpc-ppo run configs/tiny-cpu.yaml` end to end (process start, model build, MLflow) and
prints one JSON object; per-step figures are medians over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(nprocs: int, steps: int, out: Path, overrides: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "hpc_ppo.cli",
        "run",
        str(REPO / "configs/tiny-cpu.yaml"),
        f"trainer.nprocs={nprocs}",
        f"trainer.total_steps={steps}",
        f"trainer.output_dir={out}",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    warm = rows[1:] or rows
    return {
        "nprocs": nprocs,
        "steps": steps,
        "wall_s": round(wall, 2),
        "step_s_median": round(statistics.median(r["time/step"] for r in warm), 3),
        "tokens_per_s_median": round(statistics.median(r["perf/tokens_per_s"] for r in warm)),
        "gen_tokens_per_s_median": round(
            statistics.median(r["perf/gen_tokens_per_s"] for r in warm)
        ),
        "update_s_median": round(statistics.median(r["time/update_actor"] for r in warm), 4),
        "old_logprob_s_median": round(statistics.median(r["time/old_logprob"] for r in warm), 4),
        "reward_first5": round(statistics.mean(r["reward/mean"] for r in rows[:5]), 3),
        "reward_last5": round(statistics.mean(r["reward/mean"] for r in rows[-5:]), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(n, args.steps, Path(tmp), args.overrides) for n in args.nprocs]
    print(
        json.dumps(
            {
                "bench": "cpu_tiny",
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
                "overrides": args.overrides,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
