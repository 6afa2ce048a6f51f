"""The machine a bundle is for: its Python and wheel platform, and the flags that name them.

    hpc-ppo bundle -o B --python 3.12 --platform manylinux_2_39_x86_64   # a GPU host from here

pip resolves for another interpreter through `--python-version/--abi/--platform`, but it
matches each `--platform` exactly (a manylinux_2_31 wheel is no candidate for
`--platform manylinux_2_39_x86_64`), so `Target.platforms` lists every older tag the node also
runs, as pip on the node itself would. pip also evaluates environment markers
(`python_version > "3.11"`) for the interpreter it runs in, not the target: `marker_env` is the
target's, for the check in resolve.py.

Simplifications: Linux only (Slurm clusters), CPython only (no free-threaded build).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name

from hpc_ppo.errors import ConfigError

_PLATFORM = re.compile(
    r"(?P<family>manylinux_2_(?P<glibc>\d+)|manylinux2014|manylinux2010|manylinux1"
    r"|musllinux_1_(?P<musl>\d+)|linux)_(?P<arch>x86_64|aarch64|ppc64le|s390x|i686)"
)
# The legacy manylinux names and the glibc minor each stands for (PEP 600).
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
_PLATFORM_HINT = (
    "give the compute node's, e.g. --platform manylinux_2_28_x86_64 for glibc 2.28 on x86-64 "
    "(`ldd --version` on the node prints its glibc)"
)


@dataclass(frozen=True)
class Target:
    """A CPython version and the newest wheel platform the node runs."""

    python: tuple[int, int, int | None]  # (3, 12, None): the micro only where --python gave it
    platform: str  # e.g. manylinux_2_39_x86_64

    @property
    def version(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"

    @property
    def abi(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    def describe(self) -> str:
        return f"Python {self.version} ({self.abi}) on {self.platform}"

    def platforms(self) -> list[str]:
        """Every platform tag a wheel may carry to run on the node, newest first."""
        m = _PLATFORM.fullmatch(self.platform)
        assert m is not None, self.platform  # parse_platform let it in
        family, arch = m["family"], m["arch"]
        tags: list[str] = []
        if family.startswith("manylinux"):
            newest = int(m["glibc"]) if m["glibc"] else _LEGACY[family]
            # manylinux2010 and manylinux1 exist for x86 only; other arches start at 2014.
            oldest = 5 if arch in ("x86_64", "i686") else 17
            legacy = {minor: name for name, minor in _LEGACY.items()}
            for minor in range(newest, oldest - 1, -1):
                tags.append(f"manylinux_2_{minor}_{arch}")
                if minor in legacy:
                    tags.append(f"{legacy[minor]}_{arch}")
        elif family.startswith("musllinux"):
            tags = [f"musllinux_1_{n}_{arch}" for n in range(int(m["musl"]), -1, -1)]
        # Last: wheels built on such a machine (`pip wheel` tags them linux_<arch>); pip on
        # the node accepts them too, and PyPI holds none, so they come only from your links.
        return [*tags, f"linux_{arch}"]

    def pip_args(self) -> list[str]:
        """The pip options that make `pip download` / `pip install --dry-run` pick this
        target's wheels, and wheels only (a node without internet cannot build an sdist)."""
        args = ["--only-binary=:all:", "--python-version", self.version]
        args += ["--implementation", "cp", "--abi", self.abi]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args

    def tags_tried(self) -> str:
        """The tags pip tried, in a few words (pip's own list has hundreds)."""
        plats = self.platforms()
        span = plats[0] if len(plats) == 1 else f"{plats[0]} down to {plats[-1]}"
        minor = self.python[1]
        return (
            f"{self.abi}-{self.abi}, cp3{{2..{minor}}}-abi3, {self.abi}-none, py3*-none "
            f"on {span}, and any"
        )

    def marker_env(self) -> dict[str, str]:
        """PEP 508 marker values of the target (platform_release/_version stay this
        machine's: no requirement we know of depends on them)."""
        arch = _PLATFORM.fullmatch(self.platform)["arch"]  # type: ignore[index]
        micro = self.python[2] if self.python[2] is not None else 0
        full = f"{self.version}.{micro}"
        return {
            "python_version": self.version,
            "python_full_version": full,
            "implementation_name": "cpython",
            "implementation_version": full,
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": arch,
        }


def parse_python(value: str) -> tuple[int, int, int | None]:
    """`--python 3.12` (or 3.12.3) -> (3, 12, None) / (3, 12, 3)."""
    m = re.fullmatch(r"3\.(\d+)(?:\.(\d+))?", value.strip())
    if not m:
        raise ConfigError(
            f"--python {value}: give the node's Python as major.minor, e.g. --python 3.12 "
            "(`python3 --version` on the node)"
        )
    return 3, int(m[1]), int(m[2]) if m[2] else None


def parse_platform(value: str) -> str:
    """`--platform manylinux_2_28_x86_64`, checked: Linux wheel platforms only."""
    value = value.strip()
    if not _PLATFORM.fullmatch(value):
        raise ConfigError(f"--platform {value}: not a Linux wheel platform; {_PLATFORM_HINT}")
    return value


def this_machine() -> Target:
    """This interpreter and the newest platform tag this machine runs (the defaults)."""
    # The newest manylinux (or musllinux) tag: packaging lists linux_<arch> first.
    ours = [t.platform for t in sys_tags() if _PLATFORM.fullmatch(t.platform)]
    best = [p for p in ours if not p.startswith("linux_")] or ours
    if best:
        return Target(tuple(sys.version_info[:3]), best[0])  # type: ignore[arg-type]
    raise ConfigError(f"--platform: this machine ({sys.platform}) is not Linux; {_PLATFORM_HINT}")


def make_target(python: str | None, platform: str | None) -> Target:
    """The target of `--python` / `--platform`, each defaulting to this machine's."""
    if python is not None and platform is not None:
        return Target(parse_python(python), parse_platform(platform))
    here = this_machine()
    return Target(
        parse_python(python) if python is not None else here.python,
        parse_platform(platform) if platform is not None else here.platform,
    )


def parse_skip(value: str) -> Requirement:
    """`--skip torch==2.11.0`: a package the node has, pinned to the version it has."""
    try:
        req = Requirement(value)
    except InvalidRequirement:
        req = None
    spec = list(req.specifier) if req else []
    if req is None or req.marker or req.extras or len(spec) != 1 or spec[0].operator != "==":
        raise ConfigError(
            f"--skip {value}: give NAME==VERSION of a package the node already has, "
            "e.g. --skip torch==2.11.0"
        )
    req.name = canonicalize_name(req.name)
    return req


def parse_split_mb(value: str | None) -> int | None:
    """`--split-mb N`: part size in MB (10^6 bytes), a whole number >= 1; None: no split."""
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(
            f"--split-mb {value}: give the largest file your transfer allows, in whole MB "
            "(>= 1), e.g. --split-mb 60; leave it out for no split"
        )
    return int(value)


def parse_extras(value: str, provided: list[str]) -> list[str]:
    """`--extras gpu,flash` checked against the extras the project's wheel declares."""
    extras = sorted({canonicalize_name(e.strip()) for e in value.split(",") if e.strip()})
    unknown = [e for e in extras if e not in provided]
    if unknown:
        raise ConfigError(
            f"--extras {value}: {', '.join(unknown)} is not an extra of hpc-ppo; "
            f"choose from {', '.join(sorted(provided))}"
        )
    return extras


def existing_file(flag: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{flag} {value}: no such file")
    return path.resolve()


def parse_node_packages(path: Path) -> dict[str, str]:
    """`--node-packages FILE`, the node's `python -m pip freeze`: {canonical name: version}.
    Lines that pin no release (comments, `-e`, `NAME @ URL`) are passed over."""
    have: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-") or " @ " in text:
            continue
        name, sep, version = text.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ConfigError(
                f"--node-packages {path}, line {number}: {line.strip()!r} is not NAME==VERSION;"
                " give the node's `python -m pip freeze` output"
            )
        have[canonicalize_name(name.strip())] = version.strip()
    return have
