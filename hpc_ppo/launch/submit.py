"""`hpc-ppo submit`: one Slurm job through submitit, one task per GPU, all running the rank entry.

    hpc-ppo submit configs/qwen2-7b.yaml slurm.partition=gpu    # prints job_id: and run_dir:
    hpc-ppo submit configs/qwen2-7b.yaml --dry-run              # prints the batch script only

submitit renders the batch script (#SBATCH lines from `submitit_parameters`), runs sbatch and
names the logs in `<run_dir>/slurm`; every task runs the rank entry `python -m hpc_ppo.rank
RUN_DIR` directly (`task_command`), not submitit's pickled-function runner. That runner would
let a stop signal kill a task while it unpickles (its handlers come after), answer USR2 with its
rank-0-only checkpoint() (no sharded save) and, on every stop, log "Job completed successfully"
and write a result pickle. The ranks handle stops themselves (hpc_ppo.preempt): agree, save,
requeue. Without a result pickle, follow a job with `hpc-ppo status`, not submitit's
`job.result()`.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from hpc_ppo.config import Config, parse_extra_option
from hpc_ppo.launch.sbatch import job_setup, task_command, time_minutes
from hpc_ppo.launch.status import record_job

# sbatch's error text -> the config key to change, and where to look for valid values.
_HINTS = (
    ("invalid partition", "slurm.partition", "`sinfo -s` lists the partitions"),
    ("invalid account", "slurm.account", "`sacctmgr show assoc user=$USER` lists yours"),
    ("invalid qos", "slurm.qos", "`sacctmgr show assoc user=$USER` lists yours"),
    ("invalid feature", "slurm.constraint", "`sinfo -o '%N %f'` lists node features"),
    ("time limit", "slurm.time", "`sinfo -s` shows each partition's limit"),
    ("node count", "slurm.nodes", "`sinfo -s` shows the nodes per partition"),
    ("gres", "slurm.gpus_per_node", "`sinfo -o '%N %G'` lists the GPUs per node"),
    ("memory", "slurm.mem", "`sinfo -o '%N %m'` lists the memory per node (MB)"),
    ("processors", "slurm.cpus_per_task", "`sinfo -o '%N %c'` lists the CPUs per node"),
    (
        "node configuration is not available",
        "slurm.nodes / slurm.gpus_per_node / slurm.cpus_per_task / slurm.mem",
        "no node of the partition has that many; `sinfo -o '%P %D %c %m %G'`",
    ),
)


class SubmitError(RuntimeError):
    """sbatch refused the job (or is missing); the message says which config key to change."""


def submitit_parameters(cfg: Config, job_name: str) -> dict[str, Any]:
    """SlurmExecutor.update_parameters() arguments for `cfg` (names of submitit's sbatch
    renderer, `_make_sbatch_string`)."""
    s = cfg.slurm
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": s.nodes,
        "ntasks_per_node": s.ntasks_per_node,
        "cpus_per_task": s.cpus_per_task,
        "time": time_minutes(s.time),
        # --signal=USR2@<lead>, to the tasks (no B:): the ranks catch it
        "signal_delay_s": s.signal_lead_s,
        "setup": job_setup(cfg),
        # one log per task, stdout and stderr together: `tail -f <id>_0_log.out` shows rank 0
        "stderr_to_stdout": True,
        "srun_args": ["--kill-on-bad-exit=1"],
        "wckey": None,  # submitit's default tags the job "submitit" in accounting
    }
    if s.gpus_per_node and s.gpu_binding == "task":
        params["gpus_per_task"] = 1
    elif s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    for key in ("mem", "partition", "account", "qos", "constraint"):
        if getattr(s, key) is not None:
            params[key] = getattr(s, key)
    if s.exclusive:
        params["exclusive"] = True
    # submitit already writes --open-mode=append, so the log survives requeues
    extra: dict[str, Any] = {"requeue" if s.requeue else "no-requeue": True}
    extra.update(parse_extra_option(o) for o in s.extra_sbatch)
    params["additional_parameters"] = extra
    return params


def submitit_folder(run_dir: Path) -> Path:
    return (run_dir / "slurm").expanduser().absolute()


def rank_command(run_dir: Path) -> str:
    """srun's command in every task: the rank entry under the submitter's interpreter."""
    return task_command(shlex.quote(sys.executable), shlex.quote(str(run_dir.absolute())))


# submitit has no public way to submit a command (not a pickled function) or to render a batch
# script without srun present; these two private names do both. setup.cfg pins the releases
# they were checked against, and `submitit_private_api` fails with the fix if they move.
SUBMITIT_TESTED = ">=1.5.2,<1.6"


def submitit_private_api() -> tuple[Any, Any]:
    """(`_make_sbatch_string`, SlurmExecutor) after checking the private names exist."""
    import submitit
    from submitit.slurm import slurm

    render = getattr(slurm, "_make_sbatch_string", None)
    if render is None or not hasattr(slurm.SlurmExecutor, "_submit_command"):
        raise SubmitError(
            f"submitit {submitit.__version__} lacks the private functions hpc-ppo submits through"
            f" (_make_sbatch_string, SlurmExecutor._submit_command): install submitit"
            f"{SUBMITIT_TESTED}, e.g. pip install 'submitit{SUBMITIT_TESTED}'"
        )
    return render, slurm.SlurmExecutor


def batch_script(cfg: Config, run_dir: Path) -> str:
    """The batch script `submit(cfg, run_dir)` hands to sbatch, rendered without Slurm."""
    # submitit renders through this module-level function in SlurmExecutor as well; it needs no
    # srun, which the executor's constructor insists on.
    _make_sbatch_string, _ = submitit_private_api()

    params = submitit_parameters(cfg, cfg.slurm.job_name or run_dir.name)
    return _make_sbatch_string(
        command=rank_command(run_dir), folder=submitit_folder(run_dir), **params
    )


def log_path(run_dir: Path, job_id: str, task: int = 0) -> Path:
    return submitit_folder(run_dir) / f"{job_id}_{task}_log.out"


def require_sbatch() -> None:
    """Fail early, before a run folder exists, where Slurm's client commands are missing."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise SubmitError(
            "sbatch/srun not found: run `hpc-ppo submit` where Slurm's client commands are"
            " (a login node); `--dry-run` and `hpc-ppo render-sbatch` work anywhere"
        )


def submit(cfg: Config, run_dir: Path) -> str:
    """Submit the job of `run_dir` (which holds config.yaml); return the Slurm job id.

    If sbatch refuses, the run folder is deleted (no folder claims a job that does not exist)
    and SubmitError says what sbatch said and which config key to change.
    """
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        require_sbatch()
        _, SlurmExecutor = submitit_private_api()
        executor = SlurmExecutor(folder=submitit_folder(run_dir))
        submitit_folder(run_dir).mkdir(parents=True, exist_ok=True)  # submit() would make it
        executor.update_parameters(**submitit_parameters(cfg, cfg.slurm.job_name or run_dir.name))
        # submitit prints sbatch's stderr itself; we show it once, with the hint
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                # A command, not a pickled function: see the module docstring.
                job = executor._submit_command(rank_command(run_dir))
            except (FailedJobError, FailedSubmissionError) as e:
                raise SubmitError(explain_sbatch_error(str(e), cfg)) from None
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    job_id = str(job.job_id)
    record_job(run_dir, job_id)
    return job_id


def explain_sbatch_error(text: str, cfg: Config) -> str:
    """sbatch's message plus the config key that most likely caused it."""
    text = text.strip() or "sbatch failed without a message"
    lowered = text.lower()
    for needle, key, where in _HINTS:
        if needle in lowered:
            now = (
                f" (now {getattr(cfg.slurm, key.removeprefix('slurm.'))!r})"
                if " " not in key and key.startswith("slurm.")
                else ""
            )
            return f"{text}\nchange {key}{now}, e.g. `hpc-ppo submit CONFIG {key.split(' ')[0]}=...`; {where}"
    return f"{text}\ncheck the slurm.* section of the config (`hpc-ppo validate CONFIG` prints it)"
