"""What a requeue's checkpoint restore costs: the step bench's models and optimizers (0.5B GRPO:
fp32 policy with its Adam moments, ~6 GB on one rank) restored by hpc_ppo.checkpoint.load with
DCP's own reader (`--threads 1`) against the threaded one (checkpoint_read.py).

    python bench/restore.py --out /tmp/hpcppo/restore              # one GPU: 1 and 8 threads
    python bench/restore.py --device cpu --shape tiny --threads 1 4   # the script itself

One rank, no vLLM. The checkpoint is saved once; each trial builds fresh optimizers (as a
requeued job does: their Adam moments come into being inside the restore) and loads it, with
the files in the page cache (`cached`: a requeue on the same node) and after dropping them
from it (`evicted`, posix_fadvise: a requeue on another node, read from the file system),
and evicted then read ahead as a starting rank does before its imports (`prefetched`:
prefetch.py, then `--prefetch-wait-s` for the imports, then the load).
A profiled trial per thread count splits the load into DCP's optimizer-state set-up, the
reads and `set_state_dict`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Functions whose cumulative seconds split a profiled load (file suffix, function name).
PHASES = {
    "optimizer_state_setup_s": ("state_dict.py", "_init_optim_state"),
    "read_s": ("filesystem.py", "read_data"),  # DCP's, in each reading thread
    "read_wait_s": ("checkpoint_read.py", "read_data"),  # the threaded reader's, all threads
    "set_state_dict_s": ("state_dict.py", "set_state_dict"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["tiny", "0.5b"], default="0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    p.add_argument("--trials", type=int, default=2, help="timed loads per thread count and cache")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temp folder)")
    p.add_argument(
        "--prefetch-wait-s",
        type=float,
        default=5.0,
        help="`prefetched`: seconds between the read-ahead and the load (a rank imports ~10 s)",
    )
    a = p.parse_args()

    from hpc_ppo import checkpoint as ckpt
    from hpc_ppo.prefetch import start_read_ahead

    out = a.out or Path(tempfile.mkdtemp(prefix="hpcppo-restore-"))
    device = start_rank(a.device)
    cfg, models = build(a.shape, device, out)
    parts = optimizers(cfg, models, device).states  # the save brings their Adam moments into being
    saved_s = ckpt.save(out, 1, parts, {"sampler": {}}, keep=1)
    path = ckpt.checkpoint_root(out) / "step_1"
    files = sorted(path.glob("*.distcp"))
    result: dict = {
        "bench": "restore",
        "shape": a.shape,
        "device": str(device),
        "checkpoint_gb": round(sum(f.stat().st_size for f in files) / 1e9, 2),
        "files": len(files),
        "save_s": round(saved_s, 2),
        "cpu_count": os.cpu_count(),
    }

    def one_load(threads: int, cache: str, profile: bool = False) -> float | dict:
        fresh = optimizers(cfg, models, device).states
        if cache != "cached":
            for f in files:
                drop_from_page_cache(f)
        reading = None
        if cache == "prefetched":  # what rank.py starts before its imports (prefetch.py)
            reading = start_read_ahead([path / ".metadata", *files])
            time.sleep(a.prefetch_wait_s)  # the imports that run meanwhile
            read_ahead_done.append(not reading.is_alive())
        sync(device)
        start = time.perf_counter()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        ckpt.load(path, fresh, threads=threads)
        sync(device)
        if reading is not None:
            reading.join()
        if prof:
            prof.disable()
            return phases(prof) | {"total_s": round(time.perf_counter() - start, 2)}
        return time.perf_counter() - start

    read_ahead_done: list[bool] = []  # read ahead before the load began
    one_load(a.threads[0], "cached")  # first-use costs (kernels, allocator) out of the figures
    for threads in a.threads:
        row: dict = {}
        caches = ("cached", "evicted", "prefetched")
        times: dict[str, list[float]] = {cache: [] for cache in caches}
        for _ in range(a.trials):  # interleaved: a drift of the machine touches each alike
            for cache in caches:
                times[cache].append(one_load(threads, cache))
        for cache in caches:
            row[f"{cache}_s"] = [round(t, 2) for t in times[cache]]
            row[f"{cache}_median_s"] = round(statistics.median(times[cache]), 2)
        row["profiled_cached"] = one_load(threads, "cached", profile=True)
        result[f"threads_{threads}"] = row
        print(json.dumps({threads: row}), file=sys.stderr, flush=True)
    result["read_ahead_done_before_load"] = read_ahead_done
    print(json.dumps(result, indent=1))


def start_rank(device_name: str):
    """This process as a one-rank job (a free port: benches may run side by side)."""
    import socket

    from hpc_ppo.dist import init_distributed, pick_device
    from hpc_ppo.rank_env import RankEnv

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    device = pick_device(device_name, 0)
    init_distributed(RankEnv(0, 0, 1, 1, "127.0.0.1", port, 0, "single"), device)
    return device


def build(shape: str, device, out: Path, restoring: bool = False):
    """The step bench's config (configs/gpu-step.yaml; tiny: configs/tiny-cpu.yaml) and models
    (`restoring`: built for a restore, as a requeued trainer builds them)."""
    from bench.rollout import write_model_dir
    from hpc_ppo.config import load_config
    from hpc_ppo.model import build_models, build_tokenizer

    overrides = [f"trainer.output_dir={out}", f"trainer.device={device.type}"]
    if device.type != "cuda":  # the 0.5B shape on a CPU: no vLLM there, nor needed here
        overrides.append("rollout.engine=hf")
    if shape == "tiny":
        cfg = load_config(REPO / "configs/tiny-cpu.yaml", overrides)
    else:
        model_dir = out / f"model-{shape}"
        if not (model_dir / "config.json").is_file():
            write_model_dir(model_dir, shape=shape)
        cfg = load_config(REPO / "configs/gpu-step.yaml", [*overrides, f"model.path={model_dir}"])
    t, a = cfg.trainer, cfg.algo
    tokenizer = build_tokenizer(cfg.model)
    models = build_models(
        cfg.model, tokenizer, t.seed, device, a.kl_coef > 0, a.name == "ppo", restoring
    )
    return cfg, models


def optimizers(cfg, models, device):
    """Fresh optimizers (empty Adam state) over `models`, as the trainer makes them."""
    from hpc_ppo.trainer import make_optimization

    return make_optimization(cfg, models, device, cfg.trainer.total_steps)


def drop_from_page_cache(f: Path) -> None:
    with open(f, "rb") as fh:  # clean pages (the save fsynced them) go; no root needed
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phases(prof: cProfile.Profile) -> dict:
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = {}
    for key, (suffix, name) in PHASES.items():
        cum = [v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix)]
        out[key] = round(max(cum, default=0.0), 2)
    return out


if __name__ == "__main__":
    main()
