"""`hpc-ppo status RUN_DIR_OR_JOB_ID`: where a run launched on Slurm stands.

    hpc-ppo status runs/qwen2-7b-20261124-101500
    hpc-ppo status 12345                 # finds the run folder from the job id

Reports the Slurm state (`scontrol show job`, then `sacct` once slurmctld has forgotten the job;
both may be missing), the restart count, the last logged step with its main metrics
(metrics.jsonl), the newest complete checkpoint and the MLflow run id.

Job id -> run folder: `hpc-ppo submit` and the job's `hpc-ppo prepare` write `<run_dir>/slurm/job_id` and
an index entry `<output_dir>/.jobs/<job_id>` holding the run folder's path. Without the index
(another output_dir), the job's StdOut path from scontrol leads to the folder.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ppo.atomic import atomic_write_text

JOB_INDEX = ".jobs"
# Metrics shown by `status`, in this order, when the last step logged them.
MAIN_METRICS = (
    "reward/mean",
    "response/length_mean",
    "actor/approx_kl",
    "actor/pg_loss",
    "critic/vf_loss",
    "time/step",
)


def record_job(run_dir: Path, job_id: str) -> None:
    """Remember which run folder job `job_id` runs in: `<run_dir>/slurm/job_id`, and the index
    entry `<output_dir>/.jobs/<job_id>` (a run folder's parent is its output_dir)."""
    run_dir = run_dir.resolve()
    for path, text in (
        (run_dir / "slurm" / "job_id", f"{job_id}\n"),
        (run_dir.parent / JOB_INDEX / job_id, f"{run_dir}\n"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)


def read_job_id(run_dir: Path) -> str | None:
    path = run_dir / "slurm" / "job_id"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _slurm(cmd: Sequence[str], timeout: float = 20) -> str | None:
    """stdout of a Slurm client command, or None if it is missing, fails or hangs."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_scontrol(line: str) -> dict[str, str]:
    """`scontrol show job -o` output as a dict; values may contain spaces (paths, names)."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9/:_]*)=", line))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m[1]] = line[m.end() : end].strip()
    return out


def scontrol_job(job_id: str) -> dict[str, str] | None:
    """slurmctld's record of the job (kept MinJobAge seconds after it ends), or None."""
    out = _slurm(["scontrol", "show", "job", "-o", job_id])
    return parse_scontrol(out.strip().splitlines()[0]) if out and out.strip() else None


def sacct_job(job_id: str) -> dict[str, str] | None:
    """The accounting record of the job's allocation, or None without slurmdbd."""
    fields = ("JobID", "State", "ExitCode", "Elapsed", "WorkDir")
    out = _slurm(["sacct", "-n", "-X", "-P", "-o", ",".join(fields), "-j", job_id])
    rows = [line.split("|") for line in (out or "").splitlines() if line.strip()]
    return dict(zip(fields, rows[-1], strict=False)) if rows else None


def find_run_dir(
    job_id: str, output_dirs: Sequence[Path], info: dict[str, str] | None
) -> Path | None:
    """The run folder of `job_id`: the index under each output dir, then scontrol's StdOut."""
    candidates = [d / JOB_INDEX / job_id for d in output_dirs]
    if info and info.get("WorkDir"):
        candidates += [Path(info["WorkDir"]) / d / JOB_INDEX / job_id for d in output_dirs]
    for index in candidates:
        if index.is_file():
            run_dir = Path(index.read_text().strip())
            if (run_dir / "config.yaml").is_file():
                return run_dir
    stdout = Path(info.get("StdOut", "")) if info and info.get("StdOut") else None
    if stdout is not None:
        run_dir = stdout.parent.parent  # <run_dir>/slurm/<id>_0_log.out (launch.sbatch)
        if (run_dir / "config.yaml").is_file() and read_job_id(run_dir) == job_id:
            return run_dir
    return None


def last_step(run_dir: Path) -> tuple[int, int, dict[str, float | None]] | None:
    """(last step, number of steps logged, that step's metrics) from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    steps: dict[int, dict[str, float | None]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            step = int(rec.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a partial last line of a killed job
        rec.pop("time", None)
        steps.setdefault(step, {}).update(rec)
    if not steps:
        return None
    last = max(steps)
    return last, len(steps), steps[last]


def newest_checkpoint(run_dir: Path) -> Path | None:
    from hpc_ppo.checkpoint import checkpoint_root, complete_steps

    steps = complete_steps(run_dir, warn=False)
    return checkpoint_root(run_dir) / f"step_{steps[-1]}" if steps else None


@dataclass
class RunStatus:
    run_dir: Path | None
    job_id: str | None
    lines: list[tuple[str, str]] = field(default_factory=list)


def collect(arg: str, output_dirs: Sequence[Path]) -> RunStatus:
    """Everything `status` prints, as (label, text) pairs; run_dir/job_id None when unknown."""
    if Path(arg).is_dir():
        run_dir: Path | None = Path(arg).resolve()
        job_id = read_job_id(run_dir)
        info = scontrol_job(job_id) if job_id else None
    elif re.fullmatch(r"\d+(_\d+)?", arg):
        job_id = arg
        info = scontrol_job(job_id)
        run_dir = find_run_dir(job_id, output_dirs, info)
    else:
        return RunStatus(None, None)
    st = RunStatus(run_dir, job_id)
    st.lines.append(("run_dir", str(run_dir) if run_dir else "not found"))
    st.lines.append(("job_id", job_id or "none (not launched through Slurm)"))
    if job_id:
        acct = None if info else sacct_job(job_id)
        if info:
            state = f"{info.get('JobState', '?')} (scontrol"
            if info.get("Reason") not in (None, "", "None"):
                state += f"; reason {info['Reason']}"
            state += (
                f"; run time {info.get('RunTime', '?')}; exit code {info.get('ExitCode', '?')})"
            )
            restarts = info.get("Restarts", "?")
        elif acct:
            state = (
                f"{acct['State']} (sacct; elapsed {acct['Elapsed']}; exit code {acct['ExitCode']})"
            )
            restarts = "unknown (slurmctld no longer holds the job)"
        else:
            state = "unknown (neither scontrol nor sacct knows the job)"
            restarts = "unknown"
        st.lines += [("state", state), ("restarts", restarts)]
    if run_dir is None:
        return st
    logged = last_step(run_dir)
    if logged is None:
        st.lines.append(("last_step", "none logged yet"))
    else:
        step, count, metrics = logged
        total = _total_steps(run_dir)
        shown = " ".join(
            f"{k}={metrics[k]:.4g}" for k in MAIN_METRICS if isinstance(metrics.get(k), float)
        )
        st.lines.append(("last_step", f"{step} ({count} of {total} steps logged) {shown}".rstrip()))
    ckpt = newest_checkpoint(run_dir)
    # step_N holds N completed steps (0..N-1, the last logged as step N-1): say so, so that
    # "last_step: 19" beside "step_20" reads as the same point.
    done = ckpt.name.removeprefix("step_") if ckpt else ""
    shown_ckpt = f"{ckpt} ({done} steps done; a resume starts at step {done})" if ckpt else "none"
    st.lines.append(("checkpoint", shown_ckpt))
    from hpc_ppo.tracking import read_run_id

    st.lines.append(("mlflow_run_id", read_run_id(run_dir) or "none"))
    log = Path(info["StdOut"]) if info and info.get("StdOut") else None
    if log is None and job_id:
        log = run_dir / "slurm" / f"{job_id}_0_log.out"
    if log is not None and log.is_file():
        st.lines.append(("log", str(log)))
    return st


def _total_steps(run_dir: Path) -> str:
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        return str(saved["trainer"]["total_steps"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return "?"


def format_status(st: RunStatus) -> str:
    width = max(len(label) for label, _ in st.lines) + 1
    return "\n".join(f"{label + ':':<{width}} {text}" for label, text in st.lines) + "\n"
