"""`hpc-ppo` command line.

    hpc-ppo validate configs/tiny-cpu.yaml [key=value ...] [--launcher slurm]  # resolved config or errors
    hpc-ppo run configs/tiny-cpu.yaml [key=value ...]        # run the job here, without Slurm
    hpc-ppo submit configs/qwen2-7b.yaml [key=value ...] [--dry-run]   # one Slurm job (submitit)
    hpc-ppo render-sbatch configs/qwen2-7b.yaml [key=value ...] [-o FILE]  # the same job, to sbatch yourself
    hpc-ppo status RUN_DIR_OR_JOB_ID                          # Slurm state, last step, checkpoint
    hpc-ppo doctor [CONFIG] [key=value ...] [--launcher slurm]  # this node (and CONFIG) before a job
    hpc-ppo bundle -o DIR [--extras gpu] [--python 3.12] [--skip torch==2.11.0]  # offline wheels

Exit codes: 0 success, 2 bad input (nothing was started), otherwise the failing rank's code;
submit: 1 when Slurm refuses the job (its run folder is removed again); doctor: 2 when a check
fails (0 with warnings); bundle: 1 when pip finds no wheel or no resolution for the target (no
folder is left). The Slurm commands live in launch/commands.py, bundle's in bundle/command.py,
the run folder's rules in run_folder.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc_ppo.bundle.command import add_parser as add_bundle_parser
from hpc_ppo.config import LAUNCHERS, Config, Launcher, add_config_arguments, dump_yaml, load_config
from hpc_ppo.errors import ConfigError, print_config_errors
from hpc_ppo.launch.commands import add_parsers as add_slurm_parsers
from hpc_ppo.run_folder import new_run_dir, resume_config


def _load(args: argparse.Namespace, launcher: Launcher | None) -> Config | None:
    """The config of `args` checked for `launcher`, or None after printing every error."""
    try:
        return load_config(args.config, args.overrides, launcher=launcher)
    except ConfigError as e:
        print_config_errors(args.config, e, launcher)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    if (Path(args.config) / "config.yaml").is_file():  # what `hpc-ppo run RUN_DIR` resumes
        try:
            cfg = resume_config(Path(args.config).resolve(), args.overrides, save=False)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(dump_yaml(cfg))
        return 0
    cfg = _load(args, args.launcher)
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
            cfg = _load(args, "local")
            if cfg is None:
                return 2
            run_dir = new_run_dir(cfg, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from hpc_ppo.launch.local import launch_local
    from hpc_ppo.rank import LAST_ERROR, USER_CODE_EXIT

    print(
        f"hpc-ppo: {cfg.trainer.nprocs} rank(s) on this machine, run folder {run_dir}", flush=True
    )
    (run_dir / LAST_ERROR).unlink(missing_ok=True)
    code = launch_local(cfg, run_dir)
    print(f"run_dir: {run_dir}", flush=True)
    if code == USER_CODE_EXIT and (run_dir / LAST_ERROR).is_file():
        # A user function failed: its one line (function, exception, item) ends the output.
        print((run_dir / LAST_ERROR).read_text().strip(), file=sys.stderr, flush=True)
    elif code != 0:
        print(f"error: a rank exited with code {code}; see the log above", file=sys.stderr)
    return code


def cmd_export_hf(args: argparse.Namespace) -> int:
    from hpc_ppo.export import export_hf

    try:
        path = export_hf(Path(args.run_dir).resolve(), Path(args.out), args.step, args.dtype)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} -> {Path(args.out).resolve()}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import os

    from hpc_ppo.doctor import default_launcher, exit_code, format_check, run_doctor, summary

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]  # overrides of the embedded default
    checks = []
    for check in run_doctor(config, overrides, args.launcher or default_launcher(os.environ)):
        print(format_check(check), flush=True)  # as they come: importing vllm takes a while
        checks.append(check)
    print(summary(checks))
    return exit_code(checks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-ppo", description="Slurm-native PPO/GRPO for LLMs")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command")
    for name, fn, text in (
        ("validate", cmd_validate, "check a config and print it resolved"),
        ("run", cmd_run, "run the job on this machine (trainer.nprocs local ranks)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        add_config_arguments(
            p,
            "YAML config file, or a run folder (its config.yaml with the overrides a "
            + ("resume allows)" if name == "validate" else "resume allows: the run continues)"),
        )
        p.set_defaults(fn=fn)
        if name == "validate":
            p.add_argument(
                "--launcher",
                choices=LAUNCHERS,
                default="local",
                help="check the ranks this launcher starts: local (hpc-ppo run, trainer.nprocs;"
                " the default) or slurm (submit / render-sbatch, slurm.*); the slurm.* values"
                " themselves are checked either way",
            )
    p = sub.add_parser(
        "export-hf",
        help="write a transformers model folder from a checkpoint",
        description="Write the policy at a checkpoint as a transformers model folder (config, "
        "tokenizer, safetensors) that AutoModelForCausalLM.from_pretrained loads. Runs in one "
        "process on the CPU, whatever the number of ranks that saved the checkpoint.",
    )
    p.add_argument("run_dir", help="the run folder (holds config.yaml and checkpoints/)")
    p.add_argument("out", help="a new or empty folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="weights dtype (auto: the run's model.dtype; bfloat16 halves a fp32 run's size "
        "and the memory the export needs)",
    )
    p.set_defaults(fn=cmd_export_hf)
    add_slurm_parsers(sub)
    p = sub.add_parser(
        "doctor",
        help="check this node (and a config) before a long job",
        description="Check this node before a long job, one line per check (ok / warning / error"
        " with the fix): Python, torch and its CUDA, the NVIDIA driver, the GPUs this task sees"
        " and what Slurm bound, vllm and flash-attn, NCCL and multicast variables, the Slurm job"
        " and this process's rank, the folders a run writes. With a config (or overrides of the"
        " embedded default) also: its validation, the model folder, and an estimate of GPU memory"
        " and checkpoint size against this node. Run it where the job runs, e.g. srun -N1 -n1"
        " --gpus-per-node=8 hpc-ppo doctor CONFIG. Exit code 2 when a check fails.",
    )
    add_config_arguments(p, "YAML config file (optional)", optional=True)
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="the world to check the config for: slurm (slurm.*) or local (hpc-ppo run,"
        " trainer.nprocs); default: slurm inside a Slurm job (SLURM_JOB_ID set), else local",
    )
    p.set_defaults(fn=cmd_doctor)
    add_bundle_parser(sub)
    return parser


class _Version(argparse.Action):
    """--version: the package version and, in a git checkout, the commit (run only if asked)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from hpc_ppo.provenance import code_version

        print(f"hpc-ppo {code_version()}")
        parser.exit()


def _options_first(argv: list[str]) -> list[str]:
    """--dry-run and --launcher may stand anywhere among the key=value overrides; argparse
    reads them only before the overrides start, so move them there."""
    command, rest, moved = argv[:1], argv[1:], []
    i = 0
    while i < len(rest):
        if rest[i] == "--dry-run" or rest[i].startswith("--launcher="):
            moved.append(rest.pop(i))
        elif rest[i] == "--launcher" and i + 1 < len(rest):
            moved += [rest.pop(i), rest.pop(i)]
        else:
            i += 1
    return command + moved + rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_options_first(argv))
    if args.command is None:  # a bare `hpc-ppo`: say what it can do
        parser.print_help()
        return 0
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
