"""Experiment tracking for rank 0: metrics.jsonl in the run folder, mirrored to MLflow.

    tracker = Tracker("runs/x", uri=None, experiment="grpo", run_name="x")  # rank 0
    tracker = NullTracker()                                                  # other ranks

The local files are the record; MLflow is a mirror that a child process keeps in sync
(mlflow_mirror.py, where the protocol is), so a slow or dead tracking server never stalls
training (the MLflow client retries for minutes) and MLflow's import, store and calls never
take the rank's interpreter lock (MLflow is not imported in the rank at all).
Run folder files:
  metrics.jsonl   one line per log_metrics call: {"step": s, "time": unix_s, **new_metrics}
  params.json     the params logged so far; a resumed job that changes one raises
  mlflow_run_id   written once the run exists, so a requeued job reattaches to it
  artifacts.json  the files logged as MLflow artifacts ([run-folder path, artifact folder]);
                  a restarted job sends those MLflow does not list yet
Exactly once per (metric key, step), across restarts: per key, steps must increase; a step at
or below the last recorded step of that key (a step redone after a crash) is skipped. The
mirror process sends what metrics.jsonl holds beyond each key's latest step in MLflow, so
metrics a hard kill left unsent reach MLflow after the next restart. The process ignores stop
signals (the rank decides when to close), exits when the rank closes the tracker or dies, and
is killed if it outlives close()'s timeout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.errors import ConfigError
from hpc_ppo.metrics_file import repair_jsonl
from hpc_ppo.mlflow_store import artifact_root
from hpc_ppo.preempt import stop_signals_blocked

log = logging.getLogger(__name__)

Status = Literal["FINISHED", "KILLED", "FAILED"]
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value; longer values are cut, not rejected
EXIT_WAIT_S = 2  # after close(): the mirror exits at once when its stdin ends; else killed
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the hpc_ppo package


@runtime_checkable
class MetricsSink(Protocol):
    @property
    def run_id(self) -> str | None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def logged(self, key: str, step: int) -> bool: ...
    def log_artifact(self, path: Path, artifact_dir: str) -> None: ...
    def flush(self, timeout_s: float = 60) -> bool: ...
    def close(self, status: Status = "FINISHED", timeout_s: float = 60) -> bool: ...


class NullTracker:
    """What ranks other than 0 hold, so the trainer calls the same methods everywhere."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_artifact(self, path: Path, artifact_dir: str) -> None: ...

    def logged(self, key: str, step: int) -> bool:
        return False

    def flush(self, timeout_s: float = 60) -> bool:
        return True

    def close(self, status: Status = "FINISHED", timeout_s: float = 60) -> bool:
        return True


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id a previous job of this run folder created, if any."""
    path = Path(run_dir) / "mlflow_run_id"
    if not path.exists():
        return None
    return path.read_text().strip() or None


class Tracker:
    """Rank 0's tracker; see the module docstring. Not thread-safe: call from one thread."""

    def __init__(
        self,
        run_dir: str | Path,
        uri: str | None,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        experiment_tags: dict[str, str] | None = None,
    ) -> None:
        """`experiment_tags` are set on the experiment where it has none of that name yet."""
        self.run_dir = Path(run_dir).absolute()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"
        self.experiment, self.run_name = experiment, run_name
        # Reattach to the folder's own run even if the caller forgot to pass it.
        self._run_id = run_id or read_run_id(self.run_dir)
        self._experiment_id: str | None = None
        self._jsonl = self.run_dir / "metrics.jsonl"
        self._file_last = repair_jsonl(self._jsonl)
        self._file = open(self._jsonl, "ab")
        self._written = self._file.tell()  # bytes of metrics.jsonl holding whole lines
        self._params_path = self.run_dir / "params.json"
        self._params: dict[str, str] = (
            json.loads(self._params_path.read_text()) if self._params_path.exists() else {}
        )
        self._warned_nonfinite: set[str] = set()
        self._artifacts_path = self.run_dir / "artifacts.json"
        self._artifact_files: list[tuple[str, str]] = (
            [(a, b) for a, b in json.loads(self._artifacts_path.read_text())]
            if self._artifacts_path.exists()
            else []
        )
        # What the mirror process reported, guarded by _cv (the events thread writes it).
        self._cv = threading.Condition()
        self._seq = 0  # the last command sent
        self._seen = 0  # the last command the mirror's latest successful pass covered
        self._synced = 0  # bytes of metrics.jsonl in MLflow
        self._pending = True  # params, tags or artifacts not in MLflow yet
        self._terminated = self._gone = False
        self._proc = start_mirror()
        threading.Thread(target=self._read_events, name="mlflow-events", daemon=True).start()
        self._command(
            "start",
            run_dir=str(self.run_dir),
            uri=self.uri,
            experiment=experiment,
            run_name=run_name,
            run_id=self._run_id,
            artifact_root=artifact_root(self.uri),  # new experiments' artifacts: by the store
            experiment_tags=experiment_tags or {},
            artifact_files=self._artifact_files,
        )
        if self._params:  # the mirror drops those MLflow has
            self._command("params", params=self._params)
        if tags:
            self._command("tags", tags=tags)
        self._command("written", bytes=self._written)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None until the mirror process reached the store once."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The run's MLflow experiment id, known with the run id."""
        return self._experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Record params once; a ConfigError if one differs from what this run already holds
        (its config.yaml edited by hand between two jobs)."""
        new = {k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()}
        for k, v in new.items():
            if k in self._params and self._params[k] != v:
                raise ConfigError(
                    f"{self.run_dir / 'config.yaml'}: {k}={v} but this run started with "
                    f"{k}={self._params[k]} (params.json); a resumed run keeps its config: put "
                    "it back, or start a new run folder for a different experiment"
                )
        new = {k: v for k, v in new.items() if k not in self._params}
        if new:
            self._params.update(new)
            atomic_write_text(self._params_path, json.dumps(self._params, indent=1))
            self._command("params", params=new)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags (e.g. Slurm job id, restart count); unlike params they may change."""
        self._command("tags", tags={k: str(v) for k, v in tags.items()})

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append the metrics not yet recorded for this step; the mirror to MLflow is async."""
        if "step" in metrics or "time" in metrics:
            raise ValueError(f"metric names 'step' and 'time' are reserved, got {list(metrics)}")
        new: dict[str, float | None] = {}
        for k, v in metrics.items():
            if step <= self._file_last.get(k, step - 1):
                log.debug("metric %s step %d already logged, skipped", k, step)
                continue
            v = float(v)
            if not math.isfinite(v):
                if k not in self._warned_nonfinite:
                    log.warning("metric %s is %s at step %d: null in jsonl, not sent", k, v, step)
                    self._warned_nonfinite.add(k)
                new[k] = None
            else:
                new[k] = v
            self._file_last[k] = step
        if not new:
            return
        line = json.dumps({"step": step, "time": round(time.time(), 3), **new}) + "\n"
        self._file.write(line.encode())
        self._file.flush()
        self._written = self._file.tell()
        self._command("written", bytes=self._written)

    def logged(self, key: str, step: int) -> bool:
        """Whether metrics.jsonl already holds `key` at `step` (or a later step)."""
        return step <= self._file_last.get(key, -1)

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        """Send a file of the run folder to MLflow under `artifact_dir`, once: a path logged
        before (by this job or an earlier one) is not sent again; the send is async."""
        item = (str(Path(path).absolute().relative_to(self.run_dir)), artifact_dir)
        if item in self._artifact_files:
            return
        self._artifact_files.append(item)
        atomic_write_text(self._artifacts_path, json.dumps(self._artifact_files, indent=1))
        self._command("artifact", item=item)

    def flush(self, timeout_s: float = 60) -> bool:
        """Wait until MLflow holds everything logged so far; False on timeout."""
        target, seq = self._written, self._command("flush")

        def done() -> bool:
            return self._seen >= seq and self._synced >= target and not self._pending

        with self._cv:
            self._cv.wait_for(lambda: self._gone or done(), timeout_s)
            return done()

    def close(self, status: Status = "FINISHED", timeout_s: float = 60) -> bool:
        """Flush, mark the MLflow run terminated, end the mirror process; False if MLflow
        lags (the process is then ended all the same)."""
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"status={status!r}: expected FINISHED, KILLED or FAILED")
        self._command("close", status=status)
        with self._cv:
            self._cv.wait_for(lambda: self._terminated or self._gone, timeout_s)
        end_mirror(self._proc)
        self._file.close()
        if not self._terminated:
            log.warning(
                "MLflow run not closed within %.0f s; %s has all metrics", timeout_s, self._jsonl
            )
        return self._terminated

    def _command(self, op: str, **fields: Any) -> int:
        """Send a command to the mirror process; its sequence number."""
        self._seq += 1
        line = json.dumps({"op": op, "seq": self._seq, **fields}) + "\n"
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the process is gone: flush() and close() say so
            pass
        return self._seq

    def _read_events(self) -> None:
        """The mirror's events, applied as they come (a blocking read: no interpreter lock)."""
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log.debug("MLflow mirror said %r, not an event", line)
                continue
            kind = event.get("ev")
            if kind == "log":
                log.log(event["level"], "%s", event["msg"])
            elif kind == "connected":
                log_connected(self.uri, event["seconds"])
            with self._cv:
                if kind == "run":
                    self._run_id, self._experiment_id = event["run_id"], event["experiment_id"]
                elif kind == "state":
                    self._seen, self._synced = event["seen"], event["synced"]
                    self._pending = event["pending"]
                elif kind == "terminated":
                    self._terminated = True
                self._cv.notify_all()
        with self._cv:
            self._gone = True
            self._cv.notify_all()


def start_mirror() -> subprocess.Popen[str]:
    """`python -m hpc_ppo.mlflow_mirror`, this package first on its path (also when it runs
    from a source checkout), started with the stop signals blocked until it ignores them.
    MLflow's usage telemetry is off unless the user's environment says otherwise: compute
    nodes are often air-gapped, and nothing of a run should leave the cluster unasked."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with stop_signals_blocked():
        return subprocess.Popen(
            [sys.executable, "-m", "hpc_ppo.mlflow_mirror"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
        )


def end_mirror(proc: subprocess.Popen[str]) -> None:
    """Close its stdin, which makes it exit at once; kill it if it does not. No SIGTERM: it
    ignores the stop signals, as a Slurm preemption must not end it before the rank says so."""
    try:
        proc.stdin.close()
    except OSError:  # a broken pipe: it is gone already
        pass
    try:
        proc.wait(EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("MLflow mirror (pid %d) still running after its stdin closed: killed", proc.pid)
        proc.kill()
        proc.wait()


def log_connected(uri: str, seconds: float) -> None:
    """MLflow's import and the store's opening, in the tracker's process: no longer beside the
    rank's start-up on its interpreter (bench/step.py reads this line)."""
    log.info("MLflow imported and %s opened in %.1f s (tracker process)", uri, seconds)
