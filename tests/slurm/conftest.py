"""A real 2-node Slurm cluster on this host for the session (tests/slurm/local_slurm.sh).

    apt-get install -y slurm-wlm munge && apt-get install -y --no-install-recommends slurmdbd mariadb-server
    HPC_PPO_REQUIRE_SLURM=1 python -m pytest tests/slurm -q

Without Slurm installed (or without root) the tests skip, unless HPC_PPO_REQUIRE_SLURM=1 (CI sets
it), which turns the skip into a failure. HPC_PPO_SLURM_ACCT=1/0 forces accounting (MariaDB +
slurmdbd: sacct, submitit's job.state) on or off; by default it is on when installed.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import REPO

from hpc_ppo.launch.sbatch import ENDED_STATES
from hpc_ppo.rank_env import LAUNCHER_VARS

SCRIPT = Path(__file__).resolve().parent / "local_slurm.sh"
NODES = 2
# States a test waits for; PREEMPTED is left out, since a requeued job passes through it.
TERMINAL = ENDED_STATES - {"PREEMPTED"}
# Variables of an enclosing job or launcher that must not leak into test jobs: srun attaches to
# the allocation named by SLURM_JOB_ID, and resolve_rank_env prefers RANK/WORLD_SIZE/MASTER_*.
_LEAKY = LAUNCHER_VARS


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("HPC_PPO_REQUIRE_SLURM") == "1":
        pytest.fail(f"HPC_PPO_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class SlurmCluster:
    dir: Path
    nodes: list[str]
    accounting: bool
    script_env: dict[str, str] = field(repr=False)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def job_env(self, **extra: str) -> dict[str, str]:
        """Environment for srun/sbatch: this cluster, this repo importable, no inherited ranks."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_"))
        }
        for name in (*_LEAKY, "CUDA_VISIBLE_DEVICES"):
            env.pop(name, None)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env.update(SLURM_CONF=str(self.conf), PYTHONPATH=path, PYTHONUNBUFFERED="1", **extra)
        return env

    def run(
        self,
        cmd: Sequence[str],
        timeout: float = 120,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (srun, sbatch, scontrol, ...) against this cluster."""
        proc = subprocess.run(
            list(cmd), env=env or self.job_env(), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit (`sbatch --parsable ARGS`), return the job id."""
        out = self.run(["sbatch", "--parsable", *args], env=env).stdout.strip()
        return int(out.split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o` as a dict (MinJobAge=600 keeps finished jobs; no accounting needed)."""
        line = self.run(["scontrol", "show", "job", "-o", str(job_id)], timeout=30).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", line))

    def wait_job(
        self, job_id: int, states: frozenset[str] | set[str] = TERMINAL, timeout: float = 60
    ) -> str:
        """Poll until the job's state is one of `states`; return it. TimeoutError names the last one."""
        deadline, info = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in states:
                return info["JobState"]
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout}s: {info}")


def _port_base(accounting: bool) -> int:
    """A port block below the ephemeral range that nothing listens on (other clusters may run)."""
    if os.environ.get("HPC_PPO_SLURM_PORT_BASE"):
        return int(os.environ["HPC_PPO_SLURM_PORT_BASE"])
    offsets = [0, *([1, 2] if accounting else []), *(10 + i for i in range(1, NODES + 1))]
    for base in random.sample(range(10000, 20000, 100), 20):
        try:
            for offset in offsets:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block for the local Slurm cluster in [10000, 20000)")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = [b for b in ("slurmctld", "slurmd", "srun", "munged") if not shutil.which(b)]
    if missing:
        _skip_or_fail(
            f"Slurm is not installed (no {', '.join(missing)}): apt-get install -y slurm-wlm munge"
        )
    if os.geteuid() != 0:
        _skip_or_fail("the local Slurm cluster needs root (it runs munged/slurmctld/slurmd)")
    have_acct = all(shutil.which(b) for b in ("slurmdbd", "mariadbd", "mariadb-install-db"))
    want_acct = os.environ.get("HPC_PPO_SLURM_ACCT", "1" if have_acct else "0") == "1"
    if want_acct and not have_acct:
        _skip_or_fail("HPC_PPO_SLURM_ACCT=1 but slurmdbd/mariadb-server are not installed")
    # not tmp_path_factory: its dirs are 0700, and munged refuses a socket whose parents are not o+x
    d = Path(tempfile.mkdtemp(prefix="hpc-ppo-slurm-", dir="/tmp"))
    d.chmod(0o755)
    script_env = dict(
        os.environ,
        LSLURM_DIR=str(d),
        LSLURM_NODES=str(NODES),
        LSLURM_ACCT="1" if want_acct else "0",
        LSLURM_PORT_BASE=str(_port_base(want_acct)),
        # distinct job ids, hence distinct MASTER_PORTs, when two sessions share this host
        LSLURM_FIRST_JOB_ID=str(random.randrange(1000, 60_000_000)),
    )
    cluster = SlurmCluster(d, [f"n{i}" for i in range(1, NODES + 1)], want_acct, script_env)
    old_conf = os.environ.get("SLURM_CONF")
    try:
        start = subprocess.run(
            [str(SCRIPT), "start"], env=script_env, capture_output=True, text=True, timeout=120
        )
        if start.returncode != 0:
            pytest.fail(f"local Slurm cluster did not start:\n{start.stderr}", pytrace=False)
        os.environ["SLURM_CONF"] = str(
            cluster.conf
        )  # sbatch/srun/scontrol/sacct and submitit read it
        yield cluster
    finally:
        stop = subprocess.run(
            [str(SCRIPT), "stop"], env=script_env, capture_output=True, text=True, timeout=120
        )
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if stop.returncode == 0:
            shutil.rmtree(d, ignore_errors=True)
        else:  # keep the logs for a post-mortem
            print(
                f"local Slurm cluster did not stop cleanly (logs in {d}):\n{stop.stderr}",
                file=sys.stderr,
            )
