"""The run folder: named from the config, created once with its config snapshot, resumed
with launch-only overrides.

    hpc-ppo run configs/tiny-cpu.yaml            # creates runs/tiny-cpu-<time>/config.yaml
    hpc-ppo run runs/tiny-cpu-<time> trainer.total_steps=40   # resumes it: launch keys only

`hpc-ppo run`, `submit` and `render-sbatch` create it the same way; the job always runs the
snapshot, whatever happens to the YAML file afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

from hpc_ppo.config import RESUMABLE_KEYS, Config, flatten, load_config, save_config, to_dict
from hpc_ppo.errors import ConfigError


def run_dir_for(cfg: Config, config_path: str) -> Path:
    """`<output_dir>/<run_name>` (default: config stem + timestamp), not created."""
    name = cfg.trainer.run_name or f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return (Path(cfg.trainer.output_dir) / name).resolve()


def new_run_dir(cfg: Config, config_path: str) -> Path:
    """Create `<output_dir>/<run_name>` (default: config stem + timestamp); never reuse one."""
    run_dir = run_dir_for(cfg, config_path)
    name = run_dir.name
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(
            f"trainer.run_name={name}: run folder {run_dir} already exists; choose another trainer.run_name"
        ) from None
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def resume_config(run_dir: Path, overrides: list[str], save: bool = True) -> Config:
    """The run folder's config with launch-only overrides; anything else is refused. `save`
    writes the changed launch keys back (a resume does; `validate` only looks)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(
            f"{run_dir}: not a run folder (no config.yaml); pass a config file to start a run"
        )
    saved = load_config(saved_path)
    cfg = load_config(saved_path, overrides, launcher="local")
    changed = [k for k, v in flatten(to_dict(cfg)).items() if flatten(to_dict(saved)).get(k) != v]
    refused = [k for k in changed if k not in RESUMABLE_KEYS]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: cannot change when resuming {run_dir} (only {', '.join(RESUMABLE_KEYS)}); "
            "start a new run for a different experiment"
        )
    if changed and save:
        save_config(cfg, saved_path)
    return cfg
