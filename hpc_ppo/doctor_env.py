"""`hpc-ppo doctor`'s checks of this node's surroundings: NCCL / gloo variables and the
interfaces they name, NVLink multicast and the rollout's TP all-reduce, the Slurm job and the
rank this process would be, and the folders a run writes to.

    srun --ntasks=1 hpc-ppo doctor configs/qwen2-7b.yaml     # a rank's view inside a job

Functions take `environ` (tests pass a dict); the file system is probed for real (a probe
file is written and removed).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hpc_ppo.config import RolloutConfig
from hpc_ppo.doctor_node import Check, GiB, Status
from hpc_ppo.rank_env import RankEnv

MULTICAST_VARS = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
LOW_FREE = 2 * GiB  # a cache or scratch folder with less is a warning


def interface_matches(spec: str, names: list[str], prefix: bool) -> list[str]:
    """Interfaces a *_SOCKET_IFNAME value selects. NCCL's syntax (`prefix=True`): a list of
    prefixes, `=name` for exact names, `^...` to exclude; gloo's: exact names."""
    exclude = spec.startswith("^")
    spec = spec.removeprefix("^")
    exact = not prefix or spec.startswith("=")
    items = [s for s in spec.removeprefix("=").split(",") if s]
    hit = [n for n in names if any(n == s or (not exact and n.startswith(s)) for s in items)]
    return [n for n in names if n not in hit] if exclude else hit


def check_network_env(
    environ: Mapping[str, str], nodes: int, interfaces: list[str] | None = None
) -> list[Check]:
    """NCCL / gloo variables set here, and whether the interfaces they name exist."""
    names = interfaces if interfaces is not None else [n for _, n in socket.if_nameindex()]
    shown = sorted(k for k in environ if k.startswith(("NCCL_", "GLOO_", "TORCH_NCCL_")))
    listed = " ".join(f"{k}={environ[k]}" for k in shown) or "none set (NCCL's defaults)"
    checks = [Check("nccl-env", "ok", listed)]
    for var, prefix in (("NCCL_SOCKET_IFNAME", True), ("GLOO_SOCKET_IFNAME", False)):
        if not environ.get(var):
            continue
        hit = interface_matches(environ[var], names, prefix)
        if not hit:
            checks.append(
                Check(
                    "interfaces",
                    "error",
                    f"{var}={environ[var]} selects no interface of this node ({', '.join(names)}):"
                    f" set {var} to one of them, or unset it",
                )
            )
        elif nodes > 1 and all(n == "lo" for n in hit):
            checks.append(
                Check(
                    "interfaces",
                    "error",
                    f"{var}={environ[var]} selects only loopback, but the job spans {nodes}"
                    f" nodes (slurm.nodes): set {var} to the cluster network's interface"
                    f" ({', '.join(n for n in names if n != 'lo')}), or unset it",
                )
            )
        else:
            checks.append(Check("interfaces", "ok", f"{var}={environ[var]} -> {', '.join(hit)}"))
    return checks


def check_allreduce(environ: Mapping[str, str], rollout: RolloutConfig | None) -> Check:
    """NVLink multicast variables, and the TP all-reduce the engine would set up
    (rollout/allreduce.py decides; this only asks it)."""
    from hpc_ppo.rollout.allreduce import plan_allreduce

    backend = "VLLM_FLASHINFER_ALLREDUCE_BACKEND"
    facts = " ".join(f"{k}={environ.get(k, 'unset')}" for k in (*MULTICAST_VARS, backend))
    if rollout is None:
        return Check("multicast", "ok", f"{facts}; the rollout's TP all-reduce: give a config")
    if rollout.engine != "vllm" or rollout.tp == 1:
        return Check("multicast", "ok", f"{facts}; rollout.tp=1: no all-reduce in the rollout")
    try:
        plan = plan_allreduce(rollout.allreduce, rollout.tp, environ)
    except ValueError as e:
        return Check("multicast", "error", f"{facts}; {e}")
    if rollout.allreduce == "vllm":
        return Check(
            "multicast",
            "warning",
            f"{facts}; rollout.allreduce=vllm lets vLLM pick FlashInfer's NVLink-multicast"
            " 'mnnvl' all-reduce, which crashed a TP=2 engine on a host without multicast: use"
            " rollout.allreduce=custom unless this cluster's multicast is known to work",
        )
    return Check(
        "multicast", "ok", f"{facts}; rollout.allreduce={rollout.allreduce}: {plan.description}"
    )


def check_slurm(environ: Mapping[str, str]) -> Check:
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return Check("slurm", "ok", "not in a Slurm job (SLURM_JOB_ID unset)")
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES", "?")
    parts = [
        f"job {job}",
        f"{nodes} node(s) {environ.get('SLURM_JOB_NODELIST', '')}".rstrip(),
        f"{environ.get('SLURM_NTASKS', '?')} task(s)",
        f"restart {environ.get('SLURM_RESTART_COUNT', '0')}",
    ]
    step = environ.get("SLURM_STEP_ID")
    parts.append(
        f"step {step}" if step else "the batch shell, not a step (srun doctor for a rank's view)"
    )
    return Check("slurm", "ok", ", ".join(parts))


def check_rank(environ: Mapping[str, str]) -> tuple[Check, RankEnv | None]:
    """The rank this process would be (hpc_ppo.rank_env, as `python -m hpc_ppo.rank` reads it)."""
    from hpc_ppo.rank_env import resolve_rank_env

    try:
        env = resolve_rank_env(environ)
    except ValueError as e:
        return Check("rank", "error", f"{e}"), None
    if env.source == "single":
        return Check("rank", "ok", "one process (no torchrun variables, not an srun step)"), env
    text = (
        f"rank {env.rank} of {env.world_size}, local rank {env.local_rank} of"
        f" {env.local_world_size}, node {env.node_rank}, rendezvous"
        f" {env.master_addr}:{env.master_port} ({env.source})"
    )
    return Check("rank", "ok", text), env


def existing_base(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (where a run would create it)."""
    base = path.expanduser().absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    return base


def check_folder(name: str, path: Path, key: str, required: bool) -> Check:
    """`path` (or, when it does not exist yet, the folder that would hold it) is a writable
    folder with at least LOW_FREE bytes free. A probe file is written and removed."""
    path = path.expanduser().absolute()
    base = existing_base(path)
    where = str(path) if base == path else f"{path} (to be created in {base})"
    bad: Status = "error" if required else "warning"
    if not base.is_dir():
        return Check(name, bad, f"{where}: {base} is not a folder: set {key} to a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".hpc-ppo-doctor-") as probe:
            probe.write(b"probe")
            probe.flush()
    except OSError as e:
        return Check(
            name, bad, f"{where}: cannot write there ({e.strerror}): set {key} to a writable folder"
        )
    free = shutil.disk_usage(base).free
    text = f"{where}: writable, {free / GiB:.1f} GiB free"
    if free < LOW_FREE:
        return Check(name, "warning", f"{text}: free space there, or set {key} elsewhere")
    return Check(name, "ok", text)


def check_folders(
    environ: Mapping[str, str], output_dir: str, run_cache: Path | None
) -> list[Check]:
    """Where a run writes: trainer.output_dir, the compile caches, the Hugging Face cache and
    the temporary folder. `run_cache`: the folder a vLLM run points its caches at (it
    overrides VLLM_CACHE_ROOT and TRITON_CACHE_DIR); None without a vLLM config."""
    home = Path(environ.get("HOME") or Path.home())
    checks = [check_folder("output_dir", Path(output_dir), "trainer.output_dir", True)]
    if run_cache is not None:
        checks.append(check_folder("vllm-cache", run_cache, "rollout.cache_dir", True))
        triton, triton_key = run_cache / "triton", "rollout.cache_dir"
    else:
        vllm = environ.get("VLLM_CACHE_ROOT") or home / ".cache" / "vllm"
        checks.append(check_folder("vllm-cache", Path(vllm), "VLLM_CACHE_ROOT", False))
        triton = Path(environ.get("TRITON_CACHE_DIR") or home / ".triton" / "cache")
        triton_key = "TRITON_CACHE_DIR"
    checks.append(check_folder("triton-cache", triton, triton_key, False))
    hf = environ.get("HF_HOME") or home / ".cache" / "huggingface"
    checks.append(check_folder("hf-cache", Path(hf), "HF_HOME", False))
    if environ.get("TRANSFORMERS_CACHE"):
        path = Path(environ["TRANSFORMERS_CACHE"])
        checks.append(check_folder("hf-cache", path, "TRANSFORMERS_CACHE", False))
    tmp = Path(environ.get("TMPDIR") or "/tmp")
    checks.append(check_folder("tmpdir", tmp, "TMPDIR", True))
    return checks
