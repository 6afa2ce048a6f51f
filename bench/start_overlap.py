"""The warm start's overlap, alone: the model build and the checkpoint restore in the main
thread while another thread imports (vLLM where it is installed), at Python's default switch
interval (5 ms) and at the trainer's start-up interval (0.1 ms, hpc_ppo/switch_interval.py).

    python bench/start_overlap.py --out /tmp/hpcppo/overlap          # one GPU: the 0.5B step bench
    python bench/start_overlap.py --device cpu --shape tiny --modules sympy   # the script itself

Each variant runs in a new process (an import happens once per process): `sequential` builds
and restores, then imports; `beside_5ms` and `beside_0.1ms` start the import in a thread first,
as the trainer does. Prints one JSON object: per variant the seconds of the build (models and
optimizers), the restore, the import, and the window (all three done).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Imported beside the build when vLLM is not installed: the heavy part of vLLM's own import.
STAND_IN = ["torch._dynamo", "torch._inductor.lowering", "sympy", "transformers.generation"]
VARIANTS = {"sequential": None, "beside_5ms": 0.005, "beside_0.1ms": 0.0001}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["tiny", "0.5b"], default="0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True, help="model, checkpoint (kept between runs)")
    p.add_argument("--modules", nargs="+", default=None, help="what the thread imports")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        print(json.dumps(one(a)))
        return
    modules = a.modules or (["vllm"] if importlib.util.find_spec("vllm") else STAND_IN)
    prepare(a)
    result: dict = {"bench": "start_overlap", "shape": a.shape, "device": a.device}
    result["modules"] = modules
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--shape", a.shape]
        cmd += ["--device", a.device, "--out", str(a.out), "--modules", *modules]
        done = subprocess.run(cmd, capture_output=True, text=True)
        last = done.stdout.strip().splitlines()[-1:] or [""]
        result[variant] = json.loads(last[0]) if done.returncode == 0 else done.stderr[-2000:]
        print(json.dumps({variant: result[variant]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


def prepare(a: argparse.Namespace) -> None:
    """The model folder and one checkpoint of its models and optimizers, made once."""
    if (a.out / "checkpoints" / "step_1" / "COMPLETE").is_file():
        return
    from bench.restore import build, optimizers, start_rank
    from hpc_ppo import checkpoint as ckpt

    device = start_rank(a.device)
    cfg, models = build(a.shape, device, a.out)
    ckpt.save(a.out, 1, optimizers(cfg, models, device).states, {"sampler": {}}, keep=1)
    import torch.distributed as dist

    dist.destroy_process_group()


def one(a: argparse.Namespace) -> dict:
    """One variant in this process: build and restore, with the import beside or after."""
    from bench.restore import build, optimizers, start_rank, sync
    from hpc_ppo import checkpoint as ckpt

    device = start_rank(a.device)
    interval = VARIANTS[a.variant]
    seconds: dict[str, float] = {}

    def do_import() -> None:
        start = time.perf_counter()
        for name in a.modules:
            importlib.import_module(name)
        seconds["import_s"] = time.perf_counter() - start

    thread = threading.Thread(target=do_import, name="import")
    start = time.perf_counter()
    if interval is not None:
        sys.setswitchinterval(interval)
        thread.start()
    cfg, models = build(a.shape, device, a.out, restoring=True)
    parts = optimizers(cfg, models, device).states
    sync(device)
    seconds["build_s"] = time.perf_counter() - start
    ckpt.load(a.out / "checkpoints" / "step_1", parts)
    sync(device)
    seconds["restore_s"] = time.perf_counter() - start - seconds["build_s"]
    if interval is None:
        do_import()
    else:
        thread.join()
    seconds["window_s"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in seconds.items()}


if __name__ == "__main__":
    main()
