"""What an async checkpoint save blocks training: DCP's `async_save` with its default staging
(pageable CPU copies, allocated again at every save) against a writer that keeps its staged
copy in pinned memory between saves (`FileSystemWriter(cache_staged_state_dict=True)`).

    python bench/save.py --gib 24 --saves 3 --out /dev/shm/hpcppo-save    # one GPU
    python bench/save.py --device cpu --gib 0.2 --saves 2                 # the script itself

The state is `--gib` GiB of fp32 tensors on the device in 64 MiB pieces (one rank's share of
a checkpoint: the 7B PPO run's is 41.5 GB on 2 GPUs, ~10 GB on 8). Each save is timed twice:
`blocked_s`, until `async_save` returns (what training waits for), and `written_s`, until its
write finished. Writing to a RAM disk keeps the disk's speed out of the comparison. Prints
one JSON object. No hpc_ppo code: it measures the library's options before the trainer picks one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

PIECE = 16 * 1024 * 1024  # fp32 elements: 64 MiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=8.0, help="state size in GiB")
    p.add_argument("--saves", type=int, default=3, help="saves per staging mode")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="checkpoint folder (default: a temp folder)")
    a = p.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp

    device = torch.device(a.device)
    pieces = max(1, round(a.gib * 2**30 / (PIECE * 4)))
    state = {f"w{i}": torch.randn(PIECE, device=device) for i in range(pieces)}
    root = Path(a.out or tempfile.mkdtemp(prefix="hpcppo-save-"))
    modes = ["default"] + (["pinned_kept"] if device.type == "cuda" else [])  # pinning needs a GPU
    result: dict = {"gib": round(pieces * PIECE * 4 / 2**30, 2), "device": str(device)}
    for mode in modes:
        # pinned_kept: one writer whose staged CPU copy is pinned and kept between saves
        writer = (
            dcp.FileSystemWriter(root, cache_staged_state_dict=True) if mode != "default" else None
        )
        runs = []
        try:
            for i in range(a.saves):
                path = root / f"{mode}_{i}"
                for t in state.values():  # the state changes between saves, as in training
                    t.add_(1.0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                future = dcp.async_save(
                    state, checkpoint_id=str(path), storage_writer=writer, no_dist=True
                )
                blocked = time.perf_counter() - start
                future.result()
                written = time.perf_counter() - start
                runs.append({"blocked_s": round(blocked, 2), "written_s": round(written, 2)})
                shutil.rmtree(path)
        except Exception as e:  # one mode failing must not lose the other's figures
            runs.append({"error": f"{type(e).__name__}: {e}"[:300]})
        result[mode] = runs
        print(json.dumps({mode: runs}), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
