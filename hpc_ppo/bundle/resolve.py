"""Which wheels a bundle holds: pip resolves, this module checks the result for the target.

    pins = resolve([f"{wheel}[gpu]"], target, [constraints], skip)   # name -> Pin
    download(pins, target, bundle / "wheels")

pip does the resolving (`pip install --dry-run --ignore-installed --report`, with the target's
`--python-version/--abi/--platform`, wheels only) and the downloading (`pip download --no-deps`
of the exact pins), with the user's pip configuration: its indexes, find-links and global
constraints. This is how a bundle "for this machine" gets the same torch as `pip install`
here.

What pip cannot do, done here from the report's metadata:
- pip evaluates markers for the interpreter it runs in: from a Python 3.11 login node it
  leaves out vLLM's `setuptools<81; python_version > "3.11"` that a 3.12 node needs.
  `_closure` walks the requirements again with the target's markers; what the target needs and
  pip left out (or pinned outside the range) is added to the requirements and pip resolves
  again, until nothing is missing. What only the login node's markers wanted is left out.
- `--skip NAME==VER` (the node has it): pip resolves with it as a constraint, so everything
  else agrees with the node's version, then the walk stops at it: neither it nor what only it
  needs (torch's CUDA libraries) goes into the bundle.
- `--node-packages FILE` (the node's `pip freeze`): after the resolution, `on_node` leaves out
  each package the node has at a version every requirement on it accepts (triton, numpy,
  transformers on a GPU host with its own torch stack); the rest is bundled as resolved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from hpc_ppo.bundle.target import Target
from hpc_ppo.errors import BundleError

MAX_ROUNDS = 4  # pip resolutions; each adds what the target's markers need (one is usual)
# `install --dry-run --report` came in pip 22.2; 23.0.1 is the oldest pip tried with it here.
MIN_PIP = Version("23.0")


@dataclass(frozen=True)
class Pin:
    """One distribution of pip's resolution, with what its metadata requires."""

    name: str  # canonical
    version: str
    requires: tuple[str, ...] = ()
    requested: bool = False
    extras: frozenset[str] = field(default_factory=frozenset)


def run_pip(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pip ARGS` of this interpreter, its output captured."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env
    )


def resolve(
    requirements: list[str],
    target: Target,
    constraints: list[Path],
    skip: list[Requirement],
) -> dict[str, Pin]:
    """The pins the target needs for `requirements`, the skipped packages left out."""
    pip = Version(metadata.version("pip"))
    if pip < MIN_PIP:
        raise BundleError(
            f"pip {pip} (of {sys.executable}) is too old to resolve for another machine: "
            f"hpc-ppo bundle needs pip >= {MIN_PIP}; {sys.executable} -m pip install -U pip"
        )
    skipped = {r.name: r for r in skip}
    with tempfile.TemporaryDirectory(prefix="hpc-ppo-resolve-") as tmp:
        skip_file = Path(tmp) / "skip.txt"
        # A local label (2.11.0+cu130) names a build that indexes may not hold; the node's
        # build satisfies the public version, and so do the other packages' requirements.
        skip_file.write_text("".join(f"{r.name}=={_public(r)}\n" for r in skip))
        wanted = list(requirements)
        for _ in range(MAX_ROUNDS):
            pins = _pip_resolution(wanted, target, [*constraints, skip_file], skipped, Path(tmp))
            keep, missing = _closure(pins, target, skipped)
            if not missing:
                return {name: pins[name] for name in sorted(keep)}
            wanted += [m for m in dict.fromkeys(missing) if m not in wanted]
    raise BundleError(
        f"pip's resolution still misses {', '.join(missing)} for {target.describe()} after "
        f"{MAX_ROUNDS} rounds; add them to a --constraints file, pinned"
    )


def on_node(
    pins: dict[str, Pin], target: Target, have: dict[str, str]
) -> tuple[dict[str, Pin], list[Requirement]]:
    """Split `pins` into what the bundle needs and what the node has (`have`, from its
    `pip freeze`) at a version that every requirement on it accepts (those the target's
    markers and the requested extras activate, as `_closure` walks them). hpc-ppo itself is
    always bundled."""
    accepted: dict[str, list[Requirement]] = {}
    _closure(pins, target, {}, accepted)
    bundle, kept_out = {}, []
    for name, pin in pins.items():
        version = have.get(name)
        if (
            name == "hpc-ppo"
            or version is None
            or not all(
                r.specifier.contains(version, prereleases=True) for r in accepted.get(name, [])
            )
        ):
            bundle[name] = pin
        else:
            kept_out.append(Requirement(f"{name}=={version}"))
    return bundle, kept_out


def _public(req: Requirement) -> str:
    (spec,) = req.specifier
    return spec.version.split("+")[0]


def _pip_resolution(
    wanted: list[str], target: Target, constraints: list[Path], skipped: Collection[str], tmp: Path
) -> dict[str, Pin]:
    report = tmp / "report.json"
    # Not -q: pip explains a conflict at the default verbosity only.
    args = ["install", "--dry-run", "--ignore-installed", "--report", str(report)]
    args += ["--target", str(tmp / "never-written"), *target.pip_args()]
    for c in constraints:
        args += ["-c", str(c)]
    proc = run_pip(*args, *wanted)
    if proc.returncode != 0:
        raise pip_failure(proc.stdout + proc.stderr, target, skipped)
    pins = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        name = canonicalize_name(meta["name"])
        pins[name] = Pin(
            name,
            meta["version"],
            tuple(meta.get("requires_dist", ())),
            bool(item.get("requested")),
            frozenset(canonicalize_name(e) for e in item.get("requested_extras", ())),
        )
    return pins


def _closure(
    pins: dict[str, Pin],
    target: Target,
    skipped: dict[str, Requirement],
    required: dict[str, list[Requirement]] | None = None,
) -> tuple[set[str], list[str]]:
    """Walk from the requested pins with the target's markers: (what the target needs,
    requirements it needs that `pins` lacks or pins outside their range). `required`, if
    given, collects the requirements met on the way, by canonical name."""
    env = target.marker_env()
    keep: set[str] = set()
    missing: list[str] = []
    todo = [(p.name, p.extras) for p in pins.values() if p.requested]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        keep.add(name)
        pin = pins[name]
        for text in pin.requires:
            req = Requirement(text)
            contexts = [{**env, "extra": e} for e in ("", *extras)]
            if req.marker and not any(req.marker.evaluate(c) for c in contexts):
                continue
            child = canonicalize_name(req.name)
            if required is not None:
                required.setdefault(child, []).append(req)
            if child in skipped:
                have = _public(skipped[child])
                if not req.specifier.contains(have, prereleases=True):
                    raise BundleError(
                        f"--skip {skipped[child]}: {pin.name} {pin.version} needs "
                        f"{req.name}{req.specifier}, which the node's {have} is not; skip the "
                        f"version the node has, if it fits, or bundle {req.name} (no --skip)"
                    )
                continue
            got = pins.get(child)
            if got is None or not req.specifier.contains(got.version, prereleases=True):
                req.marker = None
                missing.append(str(req))
                continue
            todo.append((child, frozenset(canonicalize_name(e) for e in req.extras)))
    return keep, missing


def pip_failure(output: str, target: Target, skipped: Collection[str] = ()) -> BundleError:
    """pip's failure as one line: the requirement, the target, the tags tried, the fix."""
    where = f"for {target.describe()} (tags tried: {target.tags_tried()})"
    no_match = re.findall(r"No matching distribution found for (.+)", output)
    # In a conflict, pip lists the packages without a wheel for the target, one a line.
    after = output.partition("no matching distributions available for your environment:\n")[2]
    names = [ln.strip() for ln in after.split("\n\n")[0].splitlines() if ln.strip()]
    if no_match or names:
        what = no_match[0].strip() if no_match else names[0]
        name = re.split(r"[\s<>=!~;\[(]", what, maxsplit=1)[0]
        spec = what.split(" (from ")[0]
        detail = ""
        if not no_match:  # a conflict: a constraint's pin, if any, is the version to build
            detail = f" (pip: {_conflict_lines(output, name)})"
            pinned = re.search(rf"\(constraint\) ({re.escape(name)}\S*)", output, re.IGNORECASE)
            spec = pinned[1] if pinned else name
        other_pythons = re.search(r"require a different python version: (.+)", output)
        if other_pythons:
            detail += f" (pip: versions for other Pythons: {other_pythons[1].strip()})"
        if canonicalize_name(name) in skipped:
            detail += f" (--skip {name} is resolved against the index's wheel of that version)"
        return BundleError(
            f"no wheel of {what} {where}{detail}; fix: another --platform (a newer "
            f"manylinux_2_N where the node's glibc is 2.N or newer), --skip {name}==VERSION "
            f"if the node has it, or build the wheel on a machine of that kind (pip wheel "
            f"--no-deps '{spec}' -w WHEELS) and bundle with PIP_FIND_LINKS=WHEELS"
        )
    errors = [ln.removeprefix("ERROR: ") for ln in output.splitlines() if ln.strip()]
    caused = _conflict_lines(output, "")
    detail = caused or " | ".join(errors[-3:])
    return BundleError(
        f"pip could not resolve the requirements {where}: {detail}; fix: loosen or drop the "
        "conflicting pin in the --constraints file, or --skip a version that fits"
    )


def _conflict_lines(output: str, name: str) -> str:
    """pip's "The conflict is caused by:" lines (those naming `name`), joined."""
    block = output.partition("The conflict is caused by:")[2].split("\n\n")[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if name.lower() in ln.lower())


def download(pins: Iterable[Pin], target: Target, dest: Path) -> list[Path]:
    """Download the wheel of every pin into `dest` (pip, the exact versions, no deps)."""
    pins = list(pins)
    if not pins:
        return []
    specs = [f"{p.name}=={p.version}" for p in pins]
    proc = run_pip("download", "-q", "--no-deps", *target.pip_args(), "-d", str(dest), *specs)
    if proc.returncode != 0:
        raise pip_failure(proc.stdout + proc.stderr, target)
    found = {}
    for path in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        found[f"{name}=={version}"] = path
    wanted = [f"{p.name}=={Version(p.version)}" for p in pins]
    lost = [w for w in wanted if w not in found]
    if lost:
        raise BundleError(
            f"pip download gave no wheel of {', '.join(lost)} for {target.describe()}; run "
            "the bundle again (an index may have changed between resolving and downloading)"
        )
    return [found[w] for w in wanted]
