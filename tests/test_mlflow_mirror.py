"""The tracker's MLflow side as a process of its own (hpc_ppo/mlflow_mirror.py): MLflow stays out
of the rank, the process survives stop signals and ends with the rank, never torch inside.

Run: python -m pytest tests/test_mlflow_mirror.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, metrics, mlflow_client

from hpc_ppo.preempt import STOP_SIGNALS
from hpc_ppo.tracking import EXIT_WAIT_S, Tracker, read_run_id


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _history(run_dir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(run_dir).get_metric_history(run_id, key))


def test_mlflow_is_never_imported_in_the_tracking_process(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from hpc_ppo.tracking import Tracker\n"
        "t = Tracker(sys.argv[1], None, 'exp', 'run')\n"
        "t.log_params({'seed': '0'})\n"
        "t.log_metrics(0, {'loss': 1.0})\n"
        "assert t.flush(60) and t.run_id\n"
        "assert t.close(timeout_s=60)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert _history(tmp_path, read_run_id(tmp_path), "loss") == [(0, 1.0)]


def test_the_mirror_process_imports_mlflow_but_not_torch(tmp_path: Path) -> None:
    """The protocol spoken by hand, under `-X importtime`: every module it imported is listed."""
    with open(tmp_path / "stderr", "w") as err:  # a file: a full pipe would block the child
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "hpc_ppo.mlflow_mirror"],
            cwd=REPO,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    start = {
        "run_dir": str(tmp_path),
        "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment": "exp",
        "run_name": "run",
        "run_id": None,
        "artifact_root": None,
        "experiment_tags": {"kind": "x"},
        "artifact_files": [],
    }
    commands = [
        {"op": "start", "seq": 1, **start},
        {"op": "params", "seq": 2, "params": {"seed": "0"}},
        {"op": "close", "seq": 3, "status": "FINISHED"},
    ]
    proc.stdin.write("".join(json.dumps(c) + "\n" for c in commands))
    proc.stdin.flush()
    events = [json.loads(line) for line in proc.stdout]  # it exits after "terminated"
    proc.stdin.close()
    assert proc.wait(30) == 0
    stderr = (tmp_path / "stderr").read_text()
    kinds = [e["ev"] for e in events if e["ev"] not in ("log", "state")]
    assert kinds == ["run", "connected", "terminated"]
    client = mlflow_client(tmp_path)
    run = client.get_run(events[0]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
    assert client.get_experiment(run.info.experiment_id).tags["kind"] == "x"
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "mlflow" in imported
    assert "torch" not in imported


def test_the_process_ends_with_its_stdin_and_the_next_tracker_backfills(tmp_path: Path) -> None:
    """The rank died (its end of the pipe closed) without close(): the process exits at once,
    even mid-import, and metrics.jsonl reaches MLflow with the next job."""
    tracker = Tracker(tmp_path, None, "exp", "run")
    tracker.log_params({"seed": "0"})
    for s in range(3):
        tracker.log_metrics(s, {"loss": float(s)})
    t0 = time.monotonic()
    tracker._proc.stdin.close()
    assert tracker._proc.wait(10) == 0
    assert time.monotonic() - t0 < 5.0
    later = Tracker(tmp_path, None, "exp", "run")
    later.log_metrics(3, {"loss": 3.0})
    assert later.close(timeout_s=60)
    assert _history(tmp_path, later.run_id, "loss") == [(s, float(s)) for s in range(4)]
    assert mlflow_client(tmp_path).get_run(later.run_id).data.params == {"seed": "0"}


def test_stop_signals_do_not_end_the_process_before_close(tmp_path: Path) -> None:
    """A Slurm preemption signals every process of the step; the rank closes the tracker."""
    tracker = Tracker(tmp_path, None, "exp", "run")
    for sig in STOP_SIGNALS:  # at once: while it starts, with the signals still blocked
        os.kill(tracker._proc.pid, sig)
    tracker.log_metrics(0, {"loss": 0.0})
    assert tracker.flush(timeout_s=60)
    os.kill(tracker._proc.pid, signal.SIGTERM)  # and once it runs
    tracker.log_metrics(1, {"loss": 1.0})
    assert tracker.close("FINISHED", timeout_s=60)
    assert tracker._proc.returncode == 0
    assert mlflow_client(tmp_path).get_run(tracker.run_id).info.status == "FINISHED"
    assert _history(tmp_path, tracker.run_id, "loss") == [(0, 0.0), (1, 1.0)]
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1]


def test_close_kills_a_process_that_does_not_exit(tmp_path: Path) -> None:
    """A process that ignores its stdin's end (stopped here) must not outlive the rank."""
    tracker = Tracker(tmp_path, None, "exp", "run")
    tracker.log_metrics(0, {"loss": 0.0})
    os.kill(tracker._proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    assert not tracker.close(timeout_s=1)
    assert time.monotonic() - t0 < 1 + EXIT_WAIT_S + 2
    assert tracker._proc.returncode == -signal.SIGKILL
    assert [r["step"] for r in metrics(tmp_path)] == [0]


def test_mlflow_telemetry_is_off_unless_the_user_turned_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def child_env(folder: Path) -> dict[str, str]:
        tracker = Tracker(folder, None, "exp", "run")
        try:
            raw = Path(f"/proc/{tracker._proc.pid}/environ").read_bytes()
        finally:
            tracker.close(timeout_s=30)
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert child_env(tmp_path / "a")["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # the user's choice stands
    assert child_env(tmp_path / "b")["MLFLOW_DISABLE_TELEMETRY"] == "false"
