"""Batch scripts for people who run `sbatch` themselves, and the run folder they run.

    hpc-ppo render-sbatch configs/qwen2-7b.yaml slurm.nodes=2 -o job.sbatch && sbatch job.sbatch
    hpc-ppo submit configs/qwen2-7b.yaml slurm.nodes=2     # the same job through submitit

Both commands create the run folder `<output_dir>/<run_name>` (default: config stem +
timestamp) holding config.yaml, the resolved config, before any job exists: that snapshot, not
the YAML it came from, is what the job runs at its first start and after every requeue. Both
log to `<run_dir>/slurm/<job id>_<task>_log.out`, appended across requeues; task 0's log also
holds the batch shell's output. The rendered script asks for `slurm.*` resources (one task per
GPU), runs `slurm.setup`, then `hpc-ppo prepare RUN_DIR` in the batch shell (checks the
snapshot on the node, claims the folder for the job id) and `srun $HPC_PPO_HOLD python -u -m
hpc_ppo.rank RUN_DIR`, the entry every rank runs (`task_command`); submitit's script for
`submit` (hpc_ppo.launch.submit) runs the same srun line.

Quoting: every value that reaches a script is quoted with shlex.quote (sbatch strips those
quotes from #SBATCH lines too), and values that go into #SBATCH lines may not contain a
newline. `slurm.setup` lines are the exception by design: they are shell code (`module load
cuda/12`), written as given. Config values other than slurm.* never reach the script at all.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import hpc_ppo
from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.config import (
    Config,
    flatten,
    load_config,
    mini_batch_error,
    parse_extra_option,
    save_config,
    time_seconds,
    to_dict,
)
from hpc_ppo.errors import ConfigError
from hpc_ppo.preempt import HOLD_SIGNALS
from hpc_ppo.rank_env import LAUNCHER_VARS


def time_minutes(text: str) -> int:
    """A Slurm time limit in whole minutes, rounded up (submitit's `time` parameter)."""
    return -(-time_seconds(text) // 60)


def pythonpath_setup() -> list[str]:
    """`export PYTHONPATH=<checkout>` when hpc_ppo is imported from a source tree rather than
    site-packages, so the job's tasks import the same code as the command that launched them."""
    parent = Path(hpc_ppo.__file__).resolve().parent.parent
    paths = sysconfig.get_paths()
    if parent in {Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()}:
        return []
    return [f"export PYTHONPATH={shlex.quote(str(parent))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def job_setup(cfg: Config) -> list[str]:
    """Shell lines every hpc-ppo batch script runs before its ranks start."""
    probe = HOLD_SIGNALS.split(",")[0]
    return [
        f"unset {' '.join(LAUNCHER_VARS)}",
        # torch would start one thread per core in every task of a node
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "# tasks start with the stop signals blocked: pending, not fatal, until hpc-ppo's handlers",
        "# exist (hpc_ppo.preempt). Needs coreutils env >= 8.31; empty otherwise",
        f"HPC_PPO_HOLD=$({probe} true 2>/dev/null && echo {shlex.quote(HOLD_SIGNALS)} || true)",
        *pythonpath_setup(),
        *cfg.slurm.setup,
    ]


def task_command(python: str, run_dir: str) -> str:
    """What srun runs in every task (after job_setup); `python`, `run_dir` are shell words."""
    return f"$HPC_PPO_HOLD {python} -u -m hpc_ppo.rank {run_dir}"


def _comment(text: str) -> str:
    """A one-line shell comment, whatever `text` holds (a newline would end the comment)."""
    return "# " + text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _sbatch_line(option: str, value: str | bool | int = True) -> str:
    if value is True:
        return f"#SBATCH --{option}"
    return f"#SBATCH --{option}={shlex.quote(str(value))}"


def log_folder(run_dir: Path) -> Path:
    """Where a job's logs go: `<run_dir>/slurm`, one `<job id>_<task>_log.out` per task."""
    return run_dir / "slurm"


def log_path(run_dir: Path, job_id: str, task: int = 0) -> Path:
    """Task `task`'s log; task 0's also holds the batch shell's output (setup, prepare)."""
    return log_folder(run_dir) / f"{job_id}_{task}_log.out"


def render_sbatch(cfg: Config, run_dir: Path, command: str, python: str | None = None) -> str:
    """A commented batch script that runs the run folder `run_dir` (absolute; it holds the
    config snapshot config.yaml). `command` is the command line that made it, for the header."""
    s = cfg.slurm
    python = python or sys.executable
    q = shlex.quote
    logs = log_folder(run_dir)
    lines = [
        "#!/bin/bash",
        _comment(f"hpc-ppo job rendered by: {command}"),
        _comment(f"It runs the run folder {run_dir}: its config.yaml, written when this script"),
        "# was rendered, is the job's config at every start (editing the YAML it came from changes",
        "# nothing). One run per script: render again for another run.",
        "# Submit with `sbatch THIS_FILE`; options given to sbatch override the lines below.",
        "# One task per GPU (on CPU nodes: slurm.tasks_per_node); every task runs the rank entry",
        "# `python -m hpc_ppo.rank RUN_DIR`, which derives its rank and rendezvous from SLURM_*.",
        _sbatch_line("job-name", s.job_name or run_dir.name),
        _sbatch_line("nodes", s.nodes),
        _sbatch_line("ntasks-per-node", s.ntasks_per_node),
    ]
    if s.gpus_per_node and s.gpu_binding == "task":
        lines.append("# each task sees only its own GPU (CUDA_VISIBLE_DEVICES of length 1)")
        lines.append(_sbatch_line("gpus-per-task", 1))
    elif s.gpus_per_node:
        lines.append(_sbatch_line("gpus-per-node", s.gpus_per_node))
    lines.append(_sbatch_line("cpus-per-task", s.cpus_per_task))
    for option, value in (
        ("mem", s.mem),
        ("time", s.time),
        ("partition", s.partition),
        ("account", s.account),
        ("qos", s.qos),
        ("constraint", s.constraint),
    ):
        if value is not None:
            lines.append(_sbatch_line(option, value))
    if s.exclusive:
        lines.append(_sbatch_line("exclusive"))
    lines += [
        "# USR2 to every task this many seconds before the time limit (also on preemption, where",
        "# the cluster sets preempt_send_user_signal): the ranks agree to stop, save a checkpoint",
        "# and requeue the job. SIGTERM is handled as a stop request too.",
        _sbatch_line("signal", f"USR2@{s.signal_lead_s}"),
        _sbatch_line("requeue" if s.requeue else "no-requeue"),
        "# append: a requeued job continues its logs instead of truncating them",
        _sbatch_line("open-mode", "append"),
        "# the batch shell's output; srun below writes one log per task beside it",
        _sbatch_line("output", f"{logs}/%j_0_log.out"),
    ]
    if s.extra_sbatch:
        lines.append("# slurm.extra_sbatch")
        lines += [_sbatch_line(*parse_extra_option(o)) for o in s.extra_sbatch]
    lines += ["", "# --- environment (slurm.setup lines are shell code, run as written) ---"]
    lines += job_setup(cfg)
    lines += [
        "",
        "set -euo pipefail",
        f"PYTHON={q(python)}  # the interpreter that rendered this script",
        f"RUN_DIR={q(str(run_dir))}",
        "",
        "# Batch shell, once per start: check the snapshot against the tasks Slurm gave and the",
        "# paths this node sees, and claim the folder for this job id (after a requeue: the same",
        "# id, the same folder, the newest checkpoint and the same MLflow run).",
        '"$PYTHON" -m hpc_ppo.cli prepare "$RUN_DIR"',
        "",
        "# One rank per task, one log per task. --kill-on-bad-exit: a failing rank ends the step",
        "# instead of leaving the others blocked in a collective.",
        "srun --unbuffered --open-mode=append"
        ' --output="$RUN_DIR"/slurm/%j_%t_log.out --kill-on-bad-exit=1 '
        + task_command('"$PYTHON"', '"$RUN_DIR"'),
        "",
    ]
    return "\n".join(lines)


def write_script(run_dir: Path, text: str) -> Path:
    """`<run_dir>/slurm/job.sbatch`, and the log folder Slurm needs before the job starts
    (it creates no folders)."""
    log_folder(run_dir).mkdir(parents=True, exist_ok=True)
    script = log_folder(run_dir) / "job.sbatch"
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script


def prepare_run_dir(cfg: Config, run_dir: Path, job_id: str | None = None) -> str | None:
    """Create `run_dir` with config.yaml for the hand-written template's `prepare CONFIG
    --run-dir RUN_DIR`, which reads CONFIG at every start. Returns None if the folder is new or
    already held `cfg`; if it holds another config written by this same job (`job_id`: a
    requeue after the YAML was edited), the job keeps its snapshot and the returned warning
    says what changed. ConfigError for another job's config or a folder that is no run's.
    """
    from hpc_ppo.launch.status import read_job_id

    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:  # through the loader, so keys added since with their defaults compare equal
            old = to_dict(load_config(saved, check_paths=False))
        except ConfigError as e:
            raise ConfigError(
                f"{saved}: unreadable saved config ({e})".replace("\n", "; ")
            ) from None
        new = to_dict(cfg)
        if old == new:
            return None
        a, b = flatten(old), flatten(new)
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        shown = ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in changed[:5])
        shown += ", ..." if len(changed) > 5 else ""
        if job_id is not None and read_job_id(run_dir) == job_id:
            return (
                f"the config differs from the one job {job_id} started with ({shown}); the job"
                f" keeps running its snapshot {saved}: submit a new job to run the edit"
            )
        raise ConfigError(
            f"{run_dir} already holds a run with another config ({shown}); a requeued job must"
            " keep its config: submit a new job for a new experiment"
        )
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists and is not a run folder (no config.yaml)")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return None


# Slurm states of a job that has ended (scontrol keeps one MinJobAge seconds, then forgets it).
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)


def claim_run_dir(run_dir: Path, job_id: str) -> None:
    """Record that job `job_id` runs `run_dir`. The folder's earlier job must have ended (then
    this job resumes the run); ConfigError while it is still queued or running, since the same
    script submitted twice would otherwise train two jobs in one folder."""
    from hpc_ppo.launch.status import read_job_id, record_job, scontrol_job

    owner = read_job_id(run_dir)
    if owner not in (None, job_id):
        info = scontrol_job(owner)
        state = (info or {}).get("JobState", "")
        if info is not None and state not in ENDED_STATES:
            raise ConfigError(
                f"{run_dir} is the run folder of job {owner}, which is {state or 'not ended'}:"
                " a rendered script is one run; for another run render a new script"
                " (`hpc-ppo render-sbatch CONFIG -o FILE`)"
            )
    record_job(run_dir, job_id)


def job_id_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The id of the Slurm job this process runs in (each array element has its own)."""
    environ = os.environ if environ is None else environ
    return environ.get("SLURM_JOB_ID") or None


def allocation_errors(cfg: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Inside a batch job: the batch rules for the tasks Slurm actually gave, which differ from
    slurm.* when options were passed to sbatch (`sbatch -N 4 job.sbatch`)."""
    environ = os.environ if environ is None else environ
    ntasks = environ.get("SLURM_NTASKS")
    if not ntasks or not ntasks.isdigit() or int(ntasks) == cfg.slurm.world_size:
        return []
    world = int(ntasks)
    tasks = f"the job's {world} tasks (SLURM_NTASKS; slurm.* asked for {cfg.slurm.world_size})"
    error = mini_batch_error(cfg.algo.mini_batch_size, world, tasks)
    return [error] if error else []
