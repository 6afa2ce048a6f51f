"""bench/restore.py and bench/start_overlap.py on the CPU default: every variant reports, and
the threaded restore loads what DCP's own reader loads (the lease's time is not spent on a
script that fails)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def bench(script: str, *args: str, cwd) -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--device=cpu", "--shape=tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_restore_bench_times_each_thread_count_and_cache_state(tmp_path):
    got = bench(
        "restore.py",
        *("--threads", "1", "2", "--trials=1", "--prefetch-wait-s=0", f"--out={tmp_path}"),
        cwd=tmp_path,
    )
    assert (
        got["files"] >= 1
        and got["checkpoint_gb"] >= 0
        and len(got["read_ahead_done_before_load"]) == 2
    )
    for threads in (1, 2):
        row = got[f"threads_{threads}"]
        assert len(row["cached_s"]) == len(row["evicted_s"]) == len(row["prefetched_s"]) == 1
        profiled = row["profiled_cached"]
        assert profiled["total_s"] > 0 and profiled["optimizer_state_setup_s"] >= 0
    # DCP's reader in the main thread for 1; the threaded reader's wait for 2
    assert got["threads_1"]["profiled_cached"]["read_s"] > 0


def test_overlap_bench_runs_each_variant_in_its_own_process(tmp_path):
    got = bench("start_overlap.py", f"--out={tmp_path}", "--modules", "colorsys", cwd=tmp_path)
    assert got["modules"] == ["colorsys"]
    for variant in ("sequential", "beside_5ms", "beside_0.1ms"):
        row = got[variant]
        assert isinstance(row, dict), row  # a failed child's stderr otherwise
        assert row["window_s"] >= row["build_s"] + row["restore_s"] - 0.01
        assert {"build_s", "restore_s", "import_s", "window_s"} == set(row)
