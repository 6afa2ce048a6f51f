"""Experiment tracking for rank 0: metrics.jsonl in the run folder, mirrored to MLflow.

    tracker = Tracker("runs/x", uri=None, experiment="grpo", run_name="x")  # rank 0
    tracker = NullTracker()                                                  # other ranks

The local files are the record; MLflow is a mirror that a background thread keeps in sync, so
a slow or dead tracking server never stalls training (the MLflow client retries for minutes).
Run folder files:
  metrics.jsonl   one line per log_metrics call: {"step": s, "time": unix_s, **new_metrics}
  params.json     the params logged so far; a resumed job that changes one raises
  mlflow_run_id   written once the run exists, so a requeued job reattaches to it
  artifacts.json  the files logged as MLflow artifacts ([run-folder path, artifact folder]);
                  a restarted job sends those MLflow does not list yet
Exactly once per (metric key, step), across restarts: per key, steps must increase; a step at
or below the last recorded step of that key (a step redone after a crash) is skipped. The
background thread sends what metrics.jsonl holds beyond each key's latest step in MLflow, so
metrics a hard kill left unsent reach MLflow after the next restart.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.errors import ConfigError
from hpc_ppo.metrics_file import records, repair_jsonl
from hpc_ppo.mlflow_store import artifact_root, create_sqlite_store, sqlite_file

log = logging.getLogger(__name__)

Status = Literal["FINISHED", "KILLED", "FAILED"]
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value; longer values are cut, not rejected
_READ_CHUNK = 1 << 20


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
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"
        self._artifacts = artifact_root(self.uri)  # new experiments' artifacts: by the store
        self.experiment, self.run_name = experiment, run_name
        # Reattach to the folder's own run even if the caller forgot to pass it.
        self._run_id = run_id or read_run_id(self.run_dir)
        self._jsonl = self.run_dir / "metrics.jsonl"
        self._file_last = repair_jsonl(self._jsonl)
        self._file = open(self._jsonl, "ab")
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
        # State shared with the worker thread, guarded by _cv.
        self._cv = threading.Condition()
        self._written = self._file.tell()  # bytes of metrics.jsonl holding whole lines
        self._synced = 0  # bytes of metrics.jsonl already mirrored to MLflow
        self._pending_params = dict(self._params)  # the worker drops those MLflow has
        self._pending_tags = dict(tags or {})
        self._pending_artifacts: list[tuple[str, str]] = []  # filled by _connect, then here
        self._stop: Status | None = None
        self._nudged = self._abandon = self._terminated = False
        # Worker-only state.
        self._client: Any = None  # mlflow.MlflowClient, imported in the worker: other ranks
        self._mlflow_last: dict[str, int] = {}  # and startup skip the ~1 s mlflow import
        self._mlflow_params: dict[str, str] = {}
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None until the background thread reached the store once."""
        return self._run_id

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
            with self._cv:
                self._pending_params.update(new)
                self._cv.notify_all()

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags (e.g. Slurm job id, restart count); unlike params they may change."""
        with self._cv:
            self._pending_tags.update({k: str(v) for k, v in tags.items()})
            self._cv.notify_all()

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
        with self._cv:
            self._written = self._file.tell()
            self._cv.notify_all()

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
        with self._cv:
            self._pending_artifacts.append(item)
            self._cv.notify_all()

    def flush(self, timeout_s: float = 60) -> bool:
        """Wait until MLflow holds everything logged so far; False on timeout."""
        with self._cv:
            target = self._written
            self._nudged = True
            self._cv.notify_all()
            return self._cv.wait_for(
                lambda: self._client is not None and not self._dirty(target), timeout_s
            )

    def close(self, status: Status = "FINISHED", timeout_s: float = 60) -> bool:
        """Flush, mark the MLflow run terminated, stop the thread; False if MLflow lags."""
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"status={status!r}: expected FINISHED, KILLED or FAILED")
        with self._cv:
            self._stop, self._nudged = status, True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        with self._cv:
            self._abandon = True  # a worker stuck on a dead server exits when its call returns
            self._cv.notify_all()
        self._file.close()
        if not self._terminated:
            log.warning(
                "MLflow run not closed within %.0f s; %s has all metrics", timeout_s, self._jsonl
            )
        return self._terminated

    # --- background thread ---

    def _dirty(self, target: int | None = None) -> bool:
        target = self._written if target is None else target
        pending = self._pending_params or self._pending_tags or self._pending_artifacts
        return self._synced < target or bool(pending)

    def _work(self) -> None:
        failures = 0
        while not self._abandon:
            try:
                self._sync_once()
                if failures:
                    log.info("MLflow at %s reachable again", self.uri)
                failures = 0
            except Exception as e:  # any failure: training goes on, we retry later
                if not failures:
                    log.warning("MLflow at %s failed (%s); retrying in background", self.uri, e)
                failures += 1
            with self._cv:
                self._cv.notify_all()  # wake flush()
                if self._terminated:
                    return
                if failures:  # back off, but retry at once when flush/close asks
                    self._cv.wait_for(lambda: self._abandon or self._nudged, min(60, 2**failures))
                else:
                    self._cv.wait_for(lambda: self._abandon or self._dirty() or self._stop)
                self._nudged = False

    def _connect(self) -> None:
        from mlflow import MlflowClient

        if (db := sqlite_file(self.uri)) is not None:  # the run's own store, or a shared one
            create_sqlite_store(db)
        client = MlflowClient(tracking_uri=self.uri)
        if self._run_id is None:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = (
                exp.experiment_id
                if exp
                else client.create_experiment(self.experiment, artifact_location=self._artifacts)
            )
            run = client.create_run(exp_id, run_name=self.run_name)
            atomic_write_text(self.run_dir / "mlflow_run_id", run.info.run_id + "\n")
            self._run_id = run.info.run_id
        else:  # a requeued job: what mlflow.start_run(run_id=...) does
            run = client.get_run(self._run_id)
            client.update_run(self._run_id, status="RUNNING")
            atomic_write_text(self.run_dir / "mlflow_run_id", self._run_id + "\n")
        self._mlflow_params = dict(run.data.params)
        # Latest metrics carry the highest step per key; we only ever send increasing steps.
        self._mlflow_last = {m.key: m.step for m in run.data.to_proto().metrics}
        # Files an earlier job recorded but did not get into MLflow (killed before the send).
        listed = {
            f.path
            for folder in {d for _, d in self._artifact_files}
            for f in client.list_artifacts(self._run_id, folder)
        }
        with self._cv:
            self._pending_artifacts[:0] = [
                (p, d) for p, d in self._artifact_files if f"{d}/{Path(p).name}" not in listed
            ]
            self._pending_artifacts = list(dict.fromkeys(self._pending_artifacts))
        self._client = client

    def _send(self, kind: str, items: list, n: int) -> None:
        """log_batch in chunks of MLflow's limit. MLflow rejects a whole chunk for one invalid
        item (a metric name it does not allow): the chunk is then sent item by item, and only
        the rejected items are dropped (the run folder keeps them)."""
        for i in range(0, len(items), n):
            chunk = items[i : i + n]
            error = self._log_batch(kind, chunk)
            if error is not None:
                bad = [x for x in chunk if self._log_batch(kind, [x]) is not None]
                shown = ", ".join(sorted({x.key for x in bad}))
                log.error(
                    "MLflow rejected %s %s, dropped (the run folder keeps them): %s",
                    kind,
                    shown or "(none alone)",
                    error,
                )
            if kind == "metrics":  # progress survives a failure in a later chunk
                self._mlflow_last.update((m.key, m.step) for m in chunk)

    def _log_batch(self, kind: str, items: list) -> Exception | None:
        """One log_batch; MLflow's rejection of invalid input returned, not raised."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_batch(self._run_id, **{kind: items})
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise  # transient: retried with backoff
            return e
        return None

    def _sync_once(self) -> None:
        start = time.perf_counter()
        from mlflow.entities import Metric, Param, RunTag

        if self._client is None:
            self._connect()
            log_connected(self.uri, time.perf_counter() - start)
        with self._cv:
            params, tags = dict(self._pending_params), dict(self._pending_tags)
        for k, v in params.items():
            if self._mlflow_params.get(k, v) != v:  # only if params.json was lost or edited
                log.error(
                    "param %s: MLflow has %r, not %r; left as is", k, self._mlflow_params[k], v
                )
        new = {k: v for k, v in params.items() if k not in self._mlflow_params}
        self._send("params", [Param(k, v) for k, v in new.items()], 100)
        self._mlflow_params.update(new)
        self._send("tags", [RunTag(k, v) for k, v in tags.items()], 100)
        with self._cv:
            for k in params:
                del self._pending_params[k]
            for k, v in tags.items():
                if self._pending_tags.get(k) == v:  # else set again meanwhile: send next time
                    del self._pending_tags[k]
        while not self._abandon:
            with self._cv:
                start, end = self._synced, self._written
            if start >= end:
                break
            with open(self._jsonl, "rb") as f:
                f.seek(start)
                data = f.read(min(end - start, _READ_CHUNK))
                cut = data.rfind(b"\n") + 1
                data = data[:cut] if cut else data + f.readline()  # a line over 1 MiB
            metrics, last = [], dict(self._mlflow_last)
            for step, t, rec in records(data):
                # The logged time, not the send time: a retried batch is then identical and
                # MLflow keeps one copy of it.
                ms = int((t or time.time()) * 1000)
                for k, v in rec.items():
                    if v is not None and step > last.get(k, step - 1):
                        metrics.append(Metric(k, v, ms, step))
                        last[k] = step
            self._send("metrics", metrics, 1000)
            with self._cv:
                self._synced = start + len(data)
        with self._cv:
            artifacts = list(self._pending_artifacts)
        for item in artifacts:
            local, folder = item
            self._client.log_artifact(self._run_id, str(self.run_dir / local), folder)
            with self._cv:
                self._pending_artifacts.remove(item)
        with self._cv:
            stop = self._stop if not self._dirty() else None
        if stop:
            self._client.set_terminated(self._run_id, status=stop)
            self._terminated = True


def log_connected(uri: str, seconds: float) -> None:
    """MLflow's import and the store's opening, in the tracker's thread: it runs beside the
    rank's start-up and competes with it for the interpreter (bench/step.py reads this line)."""
    log.info("MLflow imported and %s opened in %.1f s (tracker thread)", uri, seconds)
