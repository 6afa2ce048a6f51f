"""Slurm batch scripts for people who run `sbatch` themselves, and the Slurm rules of a config.

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
import re
import shlex
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

import hpc_ppo
from hpc_ppo.config import Config, load_config, save_config, to_dict, world_errors
from hpc_ppo.errors import ConfigError
from hpc_ppo.launch.env import LAUNCHER_VARS
from hpc_ppo.preempt import HOLD_SIGNALS

# sbatch options hpc-ppo writes itself, and the config key that sets each one.
_MANAGED_OPTIONS = {
    "nodes": "slurm.nodes",
    "ntasks-per-node": "slurm.tasks_per_node",
    "ntasks": "slurm.nodes and slurm.tasks_per_node",
    "gpus-per-node": "slurm.gpus_per_node",
    "gpus-per-task": "slurm.gpu_binding",
    "cpus-per-task": "slurm.cpus_per_task",
    "mem": "slurm.mem",
    "time": "slurm.time",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "constraint": "slurm.constraint",
    "exclusive": "slurm.exclusive",
    "job-name": "slurm.job_name",
    "signal": "slurm.signal_lead_s",
    "requeue": "slurm.requeue",
    "no-requeue": "slurm.requeue",
    "output": "trainer.output_dir (hpc-ppo names the log)",
    "error": "trainer.output_dir (hpc-ppo names the log)",
    "open-mode": "nothing: hpc-ppo always appends, so a requeued job keeps its log",
}

_TIME_FORMATS = (  # Slurm's --time formats, as regexes over (days, hours, minutes, seconds)
    r"(?P<m>\d+)",
    r"(?P<m>\d+):(?P<s>\d+)",
    r"(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)",
)


def time_seconds(text: str) -> int:
    """Seconds of a Slurm time limit ("90", "1:30:00", "2-00:00:00"); ValueError if malformed."""
    for pattern in _TIME_FORMATS:
        m = re.fullmatch(pattern, text.strip())
        if m:
            parts = {k: int(v) for k, v in m.groupdict().items() if v is not None}
            return (
                parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
            )
    raise ValueError(f"not a Slurm time limit: {text!r}")


def time_minutes(text: str) -> int:
    """A Slurm time limit in whole minutes, rounded up (submitit's `time` parameter)."""
    return -(-time_seconds(text) // 60)


def parse_extra_option(option: str) -> tuple[str, str | bool]:
    """`--reservation=x` -> ("reservation", "x"); `--exclusive` -> ("exclusive", True)."""
    m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", option, flags=re.DOTALL)
    if not m:
        raise ValueError(option)
    return m[1], True if m[2] is None else m[2]


def slurm_errors(cfg: Config) -> list[str]:
    """Rules that only matter when Slurm starts the job (`submit`, `render-sbatch`, `prepare`)."""
    s, r = cfg.slurm, cfg.rollout
    errors = world_errors(cfg, "slurm")
    # A newline would end the #SBATCH line and start a shell line of the script.
    one_line = {
        "slurm.partition": s.partition,
        "slurm.account": s.account,
        "slurm.qos": s.qos,
        "slurm.constraint": s.constraint,
        "slurm.mem": s.mem,
        "slurm.time": s.time,
        "slurm.job_name": s.job_name,
        "trainer.run_name": cfg.trainer.run_name,
        "trainer.output_dir": cfg.trainer.output_dir,
        **{f"slurm.extra_sbatch[{i}]": v for i, v in enumerate(s.extra_sbatch)},
    }
    for key, value in one_line.items():
        if value is not None and ("\n" in value or "\r" in value):
            errors.append(f"{key}={value!r}: must be one line (it goes into an #SBATCH line)")
    try:
        limit = time_seconds(s.time)
        if limit <= s.signal_lead_s:
            errors.append(
                f"slurm.signal_lead_s={s.signal_lead_s} must be shorter than slurm.time={s.time}"
                f" ({limit} s): the stop signal would come at the start"
            )
    except ValueError:
        errors.append(
            f"slurm.time={s.time!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or"
            " D-HH:MM:SS (e.g. 04:00:00)"
        )
    if s.mem is not None and not re.fullmatch(r"\d+[KMGTkmgt]?", s.mem):
        errors.append(f"slurm.mem={s.mem!r}: expected a size such as 200G or 64000M (per node)")
    for i, option in enumerate(s.extra_sbatch):
        key = f"slurm.extra_sbatch[{i}]={option!r}"
        try:
            name, _ = parse_extra_option(option)
        except ValueError:
            errors.append(f"{key}: expected a long option, --name or --name=value")
            continue
        if name in _MANAGED_OPTIONS:
            errors.append(f"{key}: --{name} is set by hpc-ppo; use {_MANAGED_OPTIONS[name]}")
    if s.gpus_per_node > 0:
        if s.tasks_per_node is not None and s.tasks_per_node != s.gpus_per_node:
            errors.append(
                f"slurm.tasks_per_node={s.tasks_per_node} must equal slurm.gpus_per_node="
                f"{s.gpus_per_node} (one task per GPU), or be left unset"
            )
        if r.tp >= 1 and s.gpus_per_node % r.tp:
            errors.append(
                f"rollout.tp={r.tp} must divide slurm.gpus_per_node={s.gpus_per_node}"
                " (a tensor-parallel group lives inside one node)"
            )
    else:
        if s.gpu_binding == "task":
            errors.append("slurm.gpu_binding=task needs slurm.gpus_per_node > 0")
        if r.engine == "vllm":
            errors.append(
                "rollout.engine=vllm needs GPUs: set slurm.gpus_per_node (or rollout.engine=hf)"
            )
    return errors


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
            from hpc_ppo.tracking import flatten

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
    a, world = cfg.algo, int(ntasks)
    if a.mini_batch_size % world:
        return [
            f"algo.mini_batch_size={a.mini_batch_size} must be a multiple of the job's"
            f" {world} tasks (SLURM_NTASKS; slurm.* asked for {cfg.slurm.world_size})"
        ]
    return []
