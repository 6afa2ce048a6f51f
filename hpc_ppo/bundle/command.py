"""`hpc-ppo bundle`: the command line of the offline wheel bundle (see the package docstring).

hpc-ppo bundle -o DIR [--extras gpu] [--python 3.12] [--skip torch==2.11.0] [--split-mb 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc_ppo.errors import BundleError, ConfigError


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


def add_parser(sub: argparse._SubParsersAction) -> None:
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
