"""`hpc-ppo` command line.

    hpc-ppo validate configs/tiny-cpu.yaml [key=value ...]   # print the resolved config or errors
    hpc-ppo run configs/tiny-cpu.yaml [key=value ...]        # run the job here, without Slurm

Exit codes: 0 success, 2 bad input (nothing was started), otherwise the failing rank's code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpc_ppo.config import RESUMABLE_KEYS, Config, dump_yaml, load_config, save_config, to_dict
from hpc_ppo.errors import ConfigError
from hpc_ppo.tracking import flatten


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {args.config}: invalid configuration", file=sys.stderr)
        for line in str(e).splitlines():
            print(f"  {line}", file=sys.stderr)
        return None


def new_run_dir(cfg: Config, config_path: str) -> Path:
    """Create `<output_dir>/<run_name>` (default: config stem + timestamp); never reuse one."""
    name = cfg.trainer.run_name or f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (Path(cfg.trainer.output_dir) / name).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(
            f"trainer.run_name={name}: run folder {run_dir} already exists; choose another trainer.run_name"
        ) from None
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run folder's config with launch-only overrides; anything else is refused."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(
            f"{run_dir}: not a run folder (no config.yaml); pass a config file to start a run"
        )
    saved = load_config(saved_path)
    cfg = load_config(saved_path, overrides)
    changed = [k for k, v in flatten(to_dict(cfg)).items() if flatten(to_dict(saved)).get(k) != v]
    refused = [k for k in changed if k not in RESUMABLE_KEYS]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: cannot change when resuming {run_dir} (only {', '.join(RESUMABLE_KEYS)}); "
            "start a new run for a different experiment"
        )
    if changed:
        save_config(cfg, saved_path)
    return cfg


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    sys.stdout.write(dump_yaml(cfg))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        if Path(args.config).is_dir():
            run_dir = Path(args.config).resolve()
            cfg = resume_config(run_dir, args.overrides)
        else:
            cfg = _load(args)
            if cfg is None:
                return 2
            run_dir = new_run_dir(cfg, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from hpc_ppo.launch.local import launch_local

    print(
        f"hpc-ppo: {cfg.trainer.nprocs} rank(s) on this machine, run folder {run_dir}", flush=True
    )
    code = launch_local(cfg, run_dir)
    if code != 0:
        print(f"error: a rank exited with code {code}; see the log above", file=sys.stderr)
    print(f"run_dir: {run_dir}", flush=True)
    return code


def cmd_export_hf(args: argparse.Namespace) -> int:
    from hpc_ppo.export import export_hf

    try:
        path = export_hf(Path(args.run_dir).resolve(), Path(args.out), args.step)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} -> {Path(args.out).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-ppo", description="Slurm-native PPO/GRPO for LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("validate", cmd_validate, "check a config and print it resolved"),
        ("run", cmd_run, "run the job on this machine (trainer.nprocs local ranks)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="YAML config file (run: or a run folder to resume)")
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. actor.lr=1e-6"
        )
        p.set_defaults(fn=fn)
    p = sub.add_parser("export-hf", help="write a transformers model folder from a checkpoint")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(fn=cmd_export_hf)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
