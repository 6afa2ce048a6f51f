"""The MLflow side of rank 0's tracker, in a process of its own (tracking.Tracker starts it).

    python -m hpc_ppo.mlflow_mirror     # by tracking.Tracker: JSON lines on stdin and stdout

Why a process: a rank's start-up is Python work in one interpreter. As a thread of the rank,
MLflow's import, the sqlite store's opening and the mirroring took 7.7-9.1 s during the
start-up on an H200 host, and took turns on the interpreter lock with the model build, the
checkpoint restore and vLLM's import. Here MLflow is never imported in the rank.

Protocol, one JSON object a line. The tracker writes commands, each with a sequence number `seq`:
  {"op": "start", "run_dir", "uri", "experiment", "run_name", "run_id", "artifact_root",
   "experiment_tags", "artifact_files"}    the first line
  {"op": "written", "bytes": n}           metrics.jsonl holds n bytes of whole lines
  {"op": "params", "params": {...}}       {"op": "tags", "tags": {...}}
  {"op": "artifact", "item": [run-folder path, artifact folder]}
  {"op": "flush"}                         a pass now, also while backing off after a failure
  {"op": "close", "status": "FINISHED" | "KILLED" | "FAILED"}
and reads events:
  {"ev": "run", "run_id", "experiment_id"}      the run exists; mlflow_run_id is written
  {"ev": "connected", "seconds": s}             MLflow imported and the store opened
  {"ev": "state", "seen": seq, "synced": n, "pending": bool}   after each successful pass: it
        covered every command up to `seen`; n bytes of metrics.jsonl are in MLflow
  {"ev": "terminated"}                          the run carries the close status; exit follows
  {"ev": "log", "level": n, "msg": "..."}       a record for the rank's log
The process ignores the stop signals (a Slurm preemption signals every process of the step;
the rank decides when the tracker closes) and exits at once when stdin ends (the rank died or
gave up waiting): metrics.jsonl keeps what was not sent, and the next job sends it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.metrics_file import records
from hpc_ppo.mlflow_store import create_sqlite_store, sqlite_file
from hpc_ppo.preempt import STOP_SIGNALS, ignore_stop_signals

log = logging.getLogger("hpc_ppo.mlflow_mirror")  # also under `python -m`, where __name__ differs
_READ_CHUNK = 1 << 20
Emit = Callable[[dict[str, Any]], None]


class Mirror:
    """Keeps the MLflow run in step with the run folder; commands arrive from another thread."""

    def __init__(self, start: dict[str, Any], emit: Emit) -> None:
        self.run_dir = Path(start["run_dir"])
        self.uri: str = start["uri"]
        self.experiment, self.run_name = start["experiment"], start["run_name"]
        self._artifact_root: str | None = start["artifact_root"]
        self._experiment_tags: dict[str, str] = start["experiment_tags"]
        self._run_id: str | None = start["run_id"]
        self._jsonl = self.run_dir / "metrics.jsonl"
        self._emit = emit
        # State the command thread updates, guarded by _cv.
        self._cv = threading.Condition()
        self._seen = start["seq"]
        self._written = 0  # bytes of metrics.jsonl holding whole lines
        self._synced = 0  # bytes of metrics.jsonl already mirrored to MLflow
        self._artifact_files: list[tuple[str, str]] = [(a, b) for a, b in start["artifact_files"]]
        self._pending_params: dict[str, str] = {}  # _sync_once drops those MLflow has
        self._pending_tags: dict[str, str] = {}
        self._pending_artifacts: list[tuple[str, str]] = []  # filled by _connect, then here
        self._stop: str | None = None
        self._nudged = False
        # Worker-only state.
        self._client: Any = None  # mlflow.MlflowClient
        self._mlflow_last: dict[str, int] = {}
        self._mlflow_params: dict[str, str] = {}
        self._terminated = False

    def apply(self, command: dict[str, Any]) -> None:
        """One command from the tracker (the command thread)."""
        with self._cv:
            op = command["op"]
            if op == "written":
                self._written = max(self._written, command["bytes"])
            elif op == "params":
                self._pending_params.update(command["params"])
            elif op == "tags":
                self._pending_tags.update(command["tags"])
            elif op == "artifact":
                item = (command["item"][0], command["item"][1])
                self._artifact_files.append(item)
                self._pending_artifacts.append(item)
            elif op == "close":
                self._stop = command["status"]
            elif op != "flush":
                log.error("unknown command %r ignored: tracking.py and mlflow_mirror.py differ", op)
            # Only flush and close cut a backoff short: new metrics wait for the next retry.
            self._nudged = self._nudged or op in ("flush", "close")
            self._seen = command["seq"]
            self._cv.notify_all()

    def work(self) -> None:
        """Sync passes until the run is terminated; after a failure, retry with backoff."""
        failures = 0
        while True:
            with self._cv:
                seen, self._nudged = self._seen, False
            try:
                self._sync_once()
                if failures:
                    log.info("MLflow at %s reachable again", self.uri)
                failures = 0
            except Exception as e:  # any failure: training goes on, we retry later
                if not failures:
                    log.warning("MLflow at %s failed (%s); retrying in background", self.uri, e)
                failures += 1
            if self._terminated:
                self._emit({"ev": "terminated"})
                return
            if not failures:
                with self._cv:
                    state = {"synced": self._synced, "pending": self._pending()}
                self._emit({"ev": "state", "seen": seen, **state})  # not under _cv: it may block
            with self._cv:
                if not failures:
                    self._cv.wait_for(lambda: self._nudged or self._dirty() or self._stop)
                else:  # back off, but retry at once when flush/close asks
                    self._cv.wait_for(lambda: self._nudged, min(60, 2**failures))

    def _pending(self) -> bool:
        return bool(self._pending_params or self._pending_tags or self._pending_artifacts)

    def _dirty(self) -> bool:
        return self._synced < self._written or self._pending()

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
                else client.create_experiment(
                    self.experiment, artifact_location=self._artifact_root
                )
            )
            run = client.create_run(exp_id, run_name=self.run_name)
            atomic_write_text(self.run_dir / "mlflow_run_id", run.info.run_id + "\n")
            self._run_id = run.info.run_id
        else:  # a requeued job: what mlflow.start_run(run_id=...) does
            run = client.get_run(self._run_id)
            client.update_run(self._run_id, status="RUNNING")
            atomic_write_text(self.run_dir / "mlflow_run_id", self._run_id + "\n")
        exp_id = run.info.experiment_id
        self._tag_experiment(client, exp_id)
        self._emit({"ev": "run", "run_id": self._run_id, "experiment_id": exp_id})
        self._mlflow_params = dict(run.data.params)
        # Latest metrics carry the highest step per key; we only ever send increasing steps.
        self._mlflow_last = {m.key: m.step for m in run.data.to_proto().metrics}
        # Files an earlier job recorded but did not get into MLflow (killed before the send).
        with self._cv:
            files = list(self._artifact_files)
        listed = {
            f.path
            for folder in {d for _, d in files}
            for f in client.list_artifacts(self._run_id, folder)
        }
        with self._cv:
            self._pending_artifacts[:0] = [
                (p, d) for p, d in files if f"{d}/{Path(p).name}" not in listed
            ]
            self._pending_artifacts = list(dict.fromkeys(self._pending_artifacts))
        self._client = client

    def _tag_experiment(self, client: Any, exp_id: str) -> None:
        """The experiment tags nobody set yet (the UI's landing tab); a courtesy, not a need."""
        try:
            have = client.get_experiment(exp_id).tags
            for k, v in self._experiment_tags.items():
                if k not in have:
                    client.set_experiment_tag(exp_id, k, v)
        except Exception as e:
            log.warning("MLflow experiment %s not tagged: %s", exp_id, e)

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
            self._emit({"ev": "connected", "seconds": time.perf_counter() - start})
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
        while True:
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


class _Events:
    """Writes events to the tracker, one whole line at a time from any thread."""

    def __init__(self, out: IO[str]) -> None:
        self._out, self._lock = out, threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event) + "\n"
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):  # the tracker is gone: stdin ends next
                pass


class _ForwardToTracker(logging.Handler):
    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        self._emit({"ev": "log", "level": record.levelno, "msg": record.getMessage()})


def _read_commands(mirror: Mirror, commands: IO[str]) -> None:
    try:
        for line in commands:
            mirror.apply(json.loads(line))
    except Exception as e:  # a bug: the tracker sees the process gone and says so
        log.error("tracker command failed (%r); the MLflow mirror exits", e)
    finally:
        # The tracker closed stdin (close() gave up waiting) or died: nothing here is needed
        # any more (metrics.jsonl holds it all, the store's writes are transactions), and a
        # send stuck on a dead server must not keep this process alive. MLflow's exit hooks
        # are skipped too.
        os._exit(0)


def main() -> None:
    ignore_stop_signals()  # started with them blocked: one that came meanwhile is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # The events get stdout's pipe to themselves: a library's print goes to stderr instead of
    # into the protocol.
    emit = _Events(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    log.addHandler(_ForwardToTracker(emit))
    log.setLevel(logging.DEBUG)  # the rank's logger decides what it shows
    log.propagate = False
    first = sys.stdin.readline()
    if not first:
        return
    mirror = Mirror(json.loads(first), emit)
    threading.Thread(
        target=_read_commands, args=(mirror, sys.stdin), name="commands", daemon=True
    ).start()
    mirror.work()
    os._exit(0)  # the run is terminated; MLflow's exit hooks have nothing left to do


if __name__ == "__main__":
    main()
