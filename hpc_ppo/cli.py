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
folder is left).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpc_ppo.config import (
    LAUNCHERS,
    RESUMABLE_KEYS,
    Config,
    Launcher,
    dump_yaml,
    flatten,
    load_config,
    save_config,
    to_dict,
)
from hpc_ppo.errors import ConfigError


def _load(args: argparse.Namespace, launcher: Launcher | None) -> Config | None:
    """The config of `args` checked for `launcher`, or None after printing every error."""
    try:
        return load_config(args.config, args.overrides, launcher=launcher)
    except ConfigError as e:
        _print_errors(args.config, e, launcher)
        return None


def _print_errors(config: str, e: ConfigError, launcher: Launcher | None) -> None:
    where = " for Slurm" if launcher == "slurm" else ""
    print(f"error: {config}: invalid configuration{where}", file=sys.stderr)
    for line in str(e).splitlines():
        print(f"  {line}", file=sys.stderr)


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


def _load_for_slurm(args: argparse.Namespace, lenient_paths: str = "") -> Config | None:
    """`_load` with the Slurm world's rules. With lenient_paths (the note to print), a
    model.path / data.path missing here is a warning when it is the only problem."""
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
        _print_errors(args.config, strict, "slurm")
        return None


def _command_line(args: argparse.Namespace) -> str:
    """The hpc-ppo command of `args`, as a shell line (a rendered script's header names it)."""
    import shlex

    return f"hpc-ppo {args.command} {shlex.join([args.config, *args.overrides])}"


def cmd_submit(args: argparse.Namespace) -> int:
    from hpc_ppo.launch import submit

    cfg = _load_for_slurm(args, "an error when submitting for real" if args.dry_run else "")
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

    cfg = _load_for_slurm(args, "checked again when the job starts")
    if cfg is None:
        return 2
    try:
        # The run folder and its config snapshot exist from now on, as after `submit`: the
        # job runs this config.yaml whatever happens to the YAML file before or after sbatch.
        run_dir = new_run_dir(cfg, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render_sbatch(cfg, run_dir, _command_line(args))
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
    cfg = _load_for_slurm(args)
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


def cmd_bundle(args: argparse.Namespace) -> int:
    import shlex

    from hpc_ppo.bundle import make_bundle
    from hpc_ppo.bundle.target import (
        existing_file,
        make_target,
        parse_node_packages,
        parse_skip,
        parse_split_mb,
    )
    from hpc_ppo.errors import BundleError

    try:
        target = make_target(args.python, args.platform)
        skip = [parse_skip(s) for s in args.skip]
        split_mb = parse_split_mb(args.split_mb)
        constraints = None
        if args.constraints is not None:
            constraints = existing_file("--constraints", args.constraints)
        # The command for lock.txt, with the defaults spelled out: the target it names holds
        # wherever the lock is read.
        words = ["hpc-ppo", "bundle", "-o", args.output]
        words += ["--extras", args.extras] if args.extras else []
        words += ["--python", target.version, "--platform", target.platform]
        words += ["--constraints", str(constraints)] if constraints else []
        words += [w for r in skip for w in ("--skip", str(r))]
        words += ["--split-mb", str(split_mb)] if split_mb else []
        node_has = None
        if args.node_packages is not None:
            node_file = existing_file("--node-packages", args.node_packages)
            node_has = parse_node_packages(node_file)
            words += ["--node-packages", str(node_file)]
        print(f"hpc-ppo: bundling for {target.describe()}", file=sys.stderr, flush=True)
        summary = make_bundle(
            Path(args.output).resolve(),
            target,
            args.extras,
            constraints,
            skip,
            split_mb,
            shlex.join(words),
            node_has,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    parts = f" in {summary.parts} parts of {split_mb} MB" if summary.parts else ""
    print(f"hpc-ppo: {summary.wheels} wheels, {summary.size / 1e6:.0f} MB{parts}")
    print(f"on the node: {summary.folder}/install.sh  (a venv's python, or --target FOLDER)")
    print(f"bundle: {summary.folder}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-ppo", description="Slurm-native PPO/GRPO for LLMs")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command")
    for name, fn, text in (
        ("validate", cmd_validate, "check a config and print it resolved"),
        ("run", cmd_run, "run the job on this machine (trainer.nprocs local ranks)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "config",
            help="YAML config file, or a run folder (its config.yaml with the overrides a "
            + ("resume allows)" if name == "validate" else "resume allows: the run continues)"),
        )
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. actor.lr=1e-6"
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
        p.add_argument(
            "config",
            help="YAML config file"
            + (", or a run folder (what rendered scripts run)" if name == "prepare" else ""),
        )
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. actor.lr=1e-6"
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
    p.add_argument("config", nargs="?", help="YAML config file (optional)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. rollout.tp=2"
    )
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="the world to check the config for: slurm (slurm.*) or local (hpc-ppo run,"
        " trainer.nprocs); default: slurm inside a Slurm job (SLURM_JOB_ID set), else local",
    )
    p.set_defaults(fn=cmd_doctor)
    _add_bundle_parser(sub)
    return parser


def _add_bundle_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle",
        help="download hpc-ppo and its wheels for a node without internet",
        description="Resolve hpc-ppo's requirements (and the extras chosen) for the target "
        "Python and platform, download wheels only, and write them with hpc-ppo's own wheel, "
        "a lock file, their SHA-256 sums and install.sh (which installs with --no-index) into "
        "a new folder. Copy the folder to the node and run its install.sh.",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the bundle folder (new or empty)"
    )
    p.add_argument(
        "--extras",
        default="",
        help="comma-separated extras of hpc-ppo, e.g. gpu or gpu,flash (default: none: the CPU "
        "set)",
    )
    p.add_argument(
        "--python", metavar="X.Y", help="the node's Python (default: this interpreter's)"
    )
    p.add_argument(
        "--platform",
        help="the newest wheel platform the node runs, e.g. manylinux_2_28_x86_64 for glibc "
        "2.28 (default: this machine's)",
    )
    p.add_argument(
        "--constraints",
        metavar="FILE",
        help="pins for the resolution (default: hpc_ppo/constraints/gpu-cu130.txt with the gpu "
        "extra, the CPU torch of hpc_ppo/constraints/cpu.txt without)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="NAME==VER",
        help="a package the node has already (the site's torch): resolved against, left out, "
        "checked by install.sh (repeatable)",
    )
    p.add_argument(
        "--node-packages",
        metavar="FILE",
        help="the node's `python -m pip freeze`: what it has at a version every bundled package"
        " accepts stays out of the bundle (and is checked by install.sh)",
    )
    p.add_argument(
        "--split-mb",
        metavar="N",
        help="cut the wheels into parts of N MB (10^6 bytes) for transfer limits; install.sh "
        "joins them",
    )
    p.set_defaults(fn=cmd_bundle)


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
