"""The Slurm rules of a config: time limit formats, memory, extra #SBATCH options, values that
must fit on one batch-script line. Part of validate.py's one set of rules (it calls these).

    hpc-ppo validate configs/tiny-cpu.yaml slurm.time=99:99:99     # both errors, one line each
"""

from __future__ import annotations

import re

from hpc_ppo.config.schema import Config, SlurmConfig

# Slurm's --time formats. A part that follows a larger unit is bounded (hours below 24 after
# days, minutes and seconds below 60); the leading part is not (90 minutes, 48:00:00).
_TIME_FORMATS = (
    r"(?P<m>\d+)",
    r"(?P<m>\d+):(?P<s>\d+)",
    r"(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)",
    r"(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)",
)
_TIME_BOUNDS = {"h": ("hours", 24), "m": ("minutes", 60), "s": ("seconds", 60)}
_TIME_HELP = "expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 04:00:00)"

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


def time_seconds(text: str) -> int:
    """Seconds of a Slurm time limit ("90", "1:30:00", "2-00:00:00"); ValueError, with the
    reason, if malformed or a part is out of range ("1:99:00")."""
    for pattern in _TIME_FORMATS:
        m = re.fullmatch(pattern, text.strip())
        if not m:
            continue
        parts = {k: int(v) for k, v in m.groupdict().items()}
        leading = next(iter(parts))
        for unit, (name, bound) in _TIME_BOUNDS.items():
            if unit != leading and parts.get(unit, 0) >= bound:
                raise ValueError(f"{name}={parts[unit]} must be below {bound}; {_TIME_HELP}")
        return (
            parts.get("d", 0) * 86400
            + parts.get("h", 0) * 3600
            + parts.get("m", 0) * 60
            + parts.get("s", 0)
        )
    raise ValueError(_TIME_HELP)


def parse_extra_option(option: str) -> tuple[str, str | bool]:
    """`--reservation=x` -> ("reservation", "x"); `--exclusive` -> ("exclusive", True)."""
    m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", option, flags=re.DOTALL)
    if not m:
        raise ValueError(option)
    return m[1], True if m[2] is None else m[2]


def slurm_field_errors(s: SlurmConfig) -> list[str]:
    """The slurm.* values on their own: wrong whatever launcher runs the config, so checked
    by `hpc-ppo validate` and `run` too, not first at submit."""
    errors = _one_line_errors(
        {
            "slurm.partition": s.partition,
            "slurm.account": s.account,
            "slurm.qos": s.qos,
            "slurm.constraint": s.constraint,
            "slurm.mem": s.mem,
            "slurm.time": s.time,
            "slurm.job_name": s.job_name,
            **{f"slurm.extra_sbatch[{i}]": v for i, v in enumerate(s.extra_sbatch)},
        }
    )
    try:
        limit = time_seconds(s.time)
        if limit <= s.signal_lead_s:
            errors.append(
                f"slurm.signal_lead_s={s.signal_lead_s} must be shorter than slurm.time={s.time}"
                f" ({limit} s): the stop signal would come at the start"
            )
    except ValueError as e:
        errors.append(f"slurm.time={s.time!r}: {e}")
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
    elif s.gpu_binding == "task":
        errors.append("slurm.gpu_binding=task needs slurm.gpus_per_node > 0")
    return errors


def slurm_job_errors(cfg: Config) -> list[str]:
    """What only matters when Slurm starts the job (the world rules are in world_errors)."""
    # trainer.run_name: run_name_errors rejects every control character, for every launcher.
    errors = _one_line_errors({"trainer.output_dir": cfg.trainer.output_dir})  # --output=
    if cfg.slurm.gpus_per_node == 0 and cfg.rollout.engine == "vllm":
        errors.append(
            "rollout.engine=vllm needs GPUs: set slurm.gpus_per_node (or rollout.engine=hf)"
        )
    return errors


def _one_line_errors(values: dict[str, str | None]) -> list[str]:
    # A newline would end the #SBATCH line and start a shell line of the script.
    return [
        f"{key}={value!r}: must be one line (it goes into an #SBATCH line)"
        for key, value in values.items()
        if value is not None and ("\n" in value or "\r" in value)
    ]
