"""The Slurm commands: submit, render-sbatch, prepare and status.

    hpc-ppo submit configs/qwen2-7b.yaml [key=value ...] [--dry-run]   # one Slurm job (submitit)
    hpc-ppo render-sbatch configs/qwen2-7b.yaml [key=value ...] [-o FILE]  # to sbatch yourself
    hpc-ppo prepare RUN_DIR                                   # a rendered script's first line
    hpc-ppo status RUN_DIR_OR_JOB_ID                          # Slurm state, last step, checkpoint

Their configs are checked for the Slurm world (slurm.* decides the ranks); hpc_ppo.cli adds
these to its parser (`add_parsers`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc_ppo.config import Config, add_config_arguments, load_config
from hpc_ppo.errors import ConfigError, print_config_errors
from hpc_ppo.run_folder import new_run_dir, run_dir_for


def load_for_slurm(args: argparse.Namespace, lenient_paths: str = "") -> Config | None:
    """The config of `args` checked for the Slurm world, or None after printing its errors.
    With lenient_paths (the note to print), a model.path / data.path missing here is a
    warning when it is the only problem."""
    try:
        return load_config(args.config, args.overrides, launcher="slurm")
    except ConfigError as strict:
        if lenient_paths:
            try:
                cfg = load_config(args.config, args.overrides, launcher="slurm", check_paths=False)
            except ConfigError:
                pass
            else:
                for line in str(strict).splitlines():
                    print(f"warning: {line} ({lenient_paths})", file=sys.stderr)
                return cfg
        print_config_errors(args.config, strict, "slurm")
        return None


def command_line(args: argparse.Namespace) -> str:
    """The hpc-ppo command of `args`, as a shell line (a rendered script's header names it)."""
    import shlex

    return f"hpc-ppo {args.command} {shlex.join([args.config, *args.overrides])}"


def cmd_submit(args: argparse.Namespace) -> int:
    from hpc_ppo.launch import submit

    cfg = load_for_slurm(args, "an error when submitting for real" if args.dry_run else "")
    if cfg is None:
        return 2
    if args.dry_run:
        run_dir = run_dir_for(cfg, args.config)
        if run_dir.exists():
            print(f"warning: {run_dir} exists: a real submit refuses it", file=sys.stderr)
        script = submit.batch_script(cfg, run_dir)
        sys.stdout.write(script if script.endswith("\n") else script + "\n")
        sys.stdout.flush()
        print(f"dry run: nothing submitted, {run_dir} not created", file=sys.stderr)
        return 0
    try:
        submit.require_sbatch()
        run_dir = new_run_dir(cfg, args.config)
        job_id = submit.submit(cfg, run_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except submit.SubmitError as e:
        print(f"error: job not submitted: {e}", file=sys.stderr)
        return 1
    s = cfg.slurm
    print(f"hpc-ppo: submitted job {job_id}: {s.nodes} node(s) x {s.ntasks_per_node} task(s)")
    print(f"follow the log: tail -f {submit.log_path(run_dir, job_id)}")
    print(f"status: hpc-ppo status {job_id}")
    print(f"job_id: {job_id}")
    print(f"run_dir: {run_dir}", flush=True)
    return 0


def cmd_render_sbatch(args: argparse.Namespace) -> int:
    from hpc_ppo.launch.sbatch import render_sbatch, write_script

    cfg = load_for_slurm(args, "checked again when the job starts")
    if cfg is None:
        return 2
    try:
        # The run folder and its config snapshot exist from now on, as after `submit`: the
        # job runs this config.yaml whatever happens to the YAML file before or after sbatch.
        run_dir = new_run_dir(cfg, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render_sbatch(cfg, run_dir, command_line(args))
    kept = write_script(run_dir, text)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"run_dir: {run_dir} (a copy of this script: {kept})", file=sys.stderr)
        return 0
    Path(args.output).write_text(text, encoding="utf-8")
    Path(args.output).chmod(0o755)
    print(f"wrote {args.output}; submit it with: sbatch {args.output}", file=sys.stderr)
    print(f"run_dir: {run_dir}", flush=True)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from hpc_ppo.launch.sbatch import (
        allocation_errors,
        claim_run_dir,
        job_id_from_env,
        prepare_run_dir,
    )

    snapshot = args.run_dir is None
    if snapshot:  # `prepare RUN_DIR`: the rendered scripts' form; the folder's config is the job's
        run_dir = Path(args.config).resolve()
        if args.overrides:
            print(
                f"error: {' '.join(args.overrides)}: a run folder's config cannot be overridden"
                " by prepare (it is the snapshot taken at submission)",
                file=sys.stderr,
            )
            return 2
        if not (run_dir / "config.yaml").is_file():
            print(
                f"error: {run_dir}: not a run folder (no config.yaml); `hpc-ppo prepare CONFIG"
                " [key=value ...] --run-dir RUN_DIR` creates one",
                file=sys.stderr,
            )
            return 2
        args.config = str(run_dir / "config.yaml")
    cfg = load_for_slurm(args)
    if cfg is None:
        return 2
    errors = allocation_errors(cfg)
    run_dir = run_dir if snapshot else Path(args.run_dir).resolve()
    job_id = job_id_from_env()
    existed = (run_dir / "config.yaml").is_file()
    try:
        if errors:
            raise ConfigError("\n".join(errors))
        kept = None if snapshot else prepare_run_dir(cfg, run_dir, job_id)
        if job_id:
            claim_run_dir(run_dir, job_id)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if kept:
        print(f"warning: {kept}", file=sys.stderr, flush=True)
    new = not snapshot and not existed
    resumed = (run_dir / "metrics.jsonl").is_file() or (existed and not snapshot)
    print(
        f"hpc-ppo: {'resuming in' if resumed else 'created' if new else 'starting in'} {run_dir}",
        flush=True,
    )
    print(f"run_dir: {run_dir}", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpc_ppo.launch.status import collect, format_status

    output_dirs = [Path(d) for d in (args.output_dir or ["runs"])]
    st = collect(args.target, output_dirs)
    if not st.lines:
        print(f"error: {args.target}: neither a run folder nor a Slurm job id", file=sys.stderr)
        return 2
    sys.stdout.write(format_status(st))
    if st.run_dir is None:
        print(
            f"error: no run folder found for job {args.target} (looked in "
            f"{', '.join(f'{d}/.jobs' for d in output_dirs)} and the job's log path); "
            "pass the run folder, or --output-dir",
            file=sys.stderr,
        )
        return 2
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The Slurm commands' parsers, under `hpc-ppo`'s subcommands."""
    for name, fn, text in (
        (
            "submit",
            cmd_submit,
            "create the run folder and submit its job to Slurm (submitit; one task per GPU)",
        ),
        ("render-sbatch", cmd_render_sbatch, "create the run folder and write its sbatch script"),
        (
            "prepare",
            cmd_prepare,
            "check a run folder in a job's batch shell (rendered scripts run it)",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text)
        add_config_arguments(
            p,
            "YAML config file"
            + (", or a run folder (what rendered scripts run)" if name == "prepare" else ""),
        )
        p.set_defaults(fn=fn)
        if name == "submit":
            p.add_argument(
                "--dry-run", action="store_true", help="print the batch script; submit nothing"
            )
        elif name == "render-sbatch":
            p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
        else:
            p.add_argument(
                "--run-dir",
                help="the run folder to create or check from CONFIG (hand-written scripts);"
                " without it, CONFIG is a run folder whose config.yaml the job runs",
            )
    p = sub.add_parser(
        "status",
        help="Slurm state, last step, checkpoint of a run or job",
        description="Print a run's Slurm state and restarts, its last logged step with the main "
        "metrics, its newest checkpoint, MLflow run id and log; by run folder or Slurm job id.",
    )
    p.add_argument(
        "target", metavar="RUN_DIR_OR_JOB_ID", help="a run folder, or a Slurm job id of a run"
    )
    p.add_argument(
        "--output-dir",
        action="append",
        help="where to look up a job id's run folder (default: runs; repeatable)",
    )
    p.set_defaults(fn=cmd_status)
