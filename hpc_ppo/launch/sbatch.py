"""Slurm batch scripts for people who run `sbatch` themselves, and the run folder they use.

    hpc-ppo render-sbatch configs/qwen2-7b.yaml slurm.nodes=2 -o job.sbatch && sbatch job.sbatch

The rendered script asks for `slurm.*` resources (one task per GPU), runs `slurm.setup`, then
`hpc-ppo prepare` in the batch shell (validates, creates the run folder
`<output_dir>/<name>-$SLURM_JOB_ID`: the same folder after a requeue) and
`srun $HPC_PPO_HOLD python -u -m hpc_ppo.rank RUN_DIR`, the entry every rank runs (`task_command`).

Quoting: every config value and override that reaches a script is quoted with shlex.quote
(sbatch strips those quotes from #SBATCH lines too), and values that go into #SBATCH lines may
not contain a newline. `slurm.setup` lines are the exception by design: they are shell code
(`module load cuda/12`), written as given.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

import hpc_ppo
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


def run_name(cfg: Config, config_path: str | Path) -> str:
    """Run folder prefix of a rendered script: trainer.run_name, else the config file's stem."""
    return cfg.trainer.run_name or Path(config_path).stem


def render_sbatch(
    cfg: Config, config_path: str | Path, overrides: Sequence[str], python: str | None = None
) -> str:
    """A commented batch script that runs `cfg` (loaded from `config_path` + `overrides`)."""
    s = cfg.slurm
    name = run_name(cfg, config_path)
    config = Path(config_path).resolve()
    python = python or sys.executable
    q = shlex.quote
    log = f"{cfg.trainer.output_dir}/{name}-%j.out"
    lines = [
        "#!/bin/bash",
        _comment(
            f"hpc-ppo job rendered by: hpc-ppo render-sbatch {shlex.join([str(config_path), *overrides])}"
        ),
        "# Submit with `sbatch THIS_FILE`; options given to sbatch override the lines below.",
        "# One task per GPU (on CPU nodes: slurm.tasks_per_node); every task runs the rank entry",
        "# `python -m hpc_ppo.rank RUN_DIR`, which derives its rank and rendezvous from SLURM_*.",
        _sbatch_line("job-name", s.job_name or name),
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
        "# append: a requeued job continues its log instead of truncating it",
        _sbatch_line("open-mode", "append"),
        _comment(
            f"Slurm does not create folders: {cfg.trainer.output_dir} must exist when the job starts"
        ),
        _sbatch_line("output", log),
    ]
    if s.extra_sbatch:
        lines.append("# slurm.extra_sbatch")
        lines += [_sbatch_line(*parse_extra_option(o)) for o in s.extra_sbatch]
    lines += ["", "# --- environment (slurm.setup lines are shell code, run as written) ---"]
    lines += job_setup(cfg)
    lines += [
        "",
        "set -euo pipefail",
        f"PYTHON={q(python)}  # the interpreter render-sbatch ran under",
        f"CONFIG={q(str(config))}",
        f"OUTPUT_DIR={q(cfg.trainer.output_dir)}  # a relative one is under the folder sbatch ran in",
        "# One run folder per job id: after a requeue (same SLURM_JOB_ID) the job finds its",
        "# checkpoints and MLflow run there again.",
        f'RUN_DIR="$OUTPUT_DIR"/{q(name)}-"$SLURM_JOB_ID"',
        "",
        "# Batch shell, once per start: validate the config and create RUN_DIR/config.yaml. After",
        "# a requeue the folder holds the same config and this does nothing; a changed config is",
        "# an error (start a new job for a new experiment).",
        " ".join(
            [
                '"$PYTHON" -m hpc_ppo.cli prepare "$CONFIG"',
                *(q(o) for o in overrides),
                '--run-dir "$RUN_DIR"',
            ]
        ),
        "",
        "# One rank per task. --kill-on-bad-exit: a failing rank ends the step instead of leaving",
        "# the others blocked in a collective.",
        "srun --kill-on-bad-exit=1 " + task_command('"$PYTHON"', '"$RUN_DIR"'),
        "",
    ]
    return "\n".join(lines)


def prepare_run_dir(cfg: Config, run_dir: Path) -> bool:
    """Create `run_dir` with config.yaml; True if it was new, False if it already held `cfg`
    (a requeued job). Raises ConfigError if it holds another config or is not a run folder."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:  # through the loader, so keys added since with their defaults compare equal
            old = to_dict(load_config(saved, check_paths=False))
        except ConfigError as e:
            raise ConfigError(
                f"{saved}: unreadable saved config ({e})".replace("\n", "; ")
            ) from None
        new = to_dict(cfg)
        if old != new:
            a, b = flatten(old), flatten(new)
            changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            shown = ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in changed[:5])
            raise ConfigError(
                f"{run_dir} already holds a run with another config ({shown}"
                f"{', ...' if len(changed) > 5 else ''}); a requeued job must keep its config:"
                " submit a new job for a new experiment"
            )
        return False
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists and is not a run folder (no config.yaml)")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return True


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
