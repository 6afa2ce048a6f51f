"""`hpc-ppo doctor`'s checks of this node's software and GPUs, and the `Check` every doctor
check returns.

    srun --ntasks=1 --gpus-per-node=8 hpc-ppo doctor configs/qwen2-7b.yaml   # in an allocation

Python and torch versions, the NVIDIA driver against torch's CUDA, the GPUs this task sees and
what bound them, vllm / flash-attn imports (doctor_env.py: network, Slurm, rank, folders). Each
check is a small function; the outside world is read at its boundary (`environ`, torch.cuda,
nvidia-smi, /proc, a child Python), and a failure to look is a result, never an exception.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpc_ppo.config import Config, ModelConfig, RolloutConfig
from hpc_ppo.rank_env import RankEnv

Status = Literal["ok", "warning", "error"]
GiB = 1024**3
# NVIDIA's minimum driver per CUDA major release (minor-version compatibility: any toolkit of
# that major runs on it), docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
BINDING_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "SLURM_GPUS_ON_NODE",
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "SLURM_GPUS_PER_TASK",
    "SLURM_TRES_PER_TASK",
    "SLURM_LOCALID",
)
IMPORT_TIMEOUT_S = 300  # importing vllm cold on a network file system takes a while


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, the verdict, the facts and (for a warning
    or an error) what to change."""

    name: str
    status: Status
    message: str


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(map(str, version))
    if version < (3, 10):
        return Check(
            "python",
            "error",
            f"{text} ({sys.executable}): hpc-ppo needs >= 3.10; make the venv with a newer python3",
        )
    return Check("python", "ok", f"{text} ({sys.executable})")


def check_torch(needs_cuda: str | None) -> Check:
    """torch and its CUDA build; `needs_cuda` names the config key that needs a GPU, if any."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        if needs_cuda:
            return Check(
                "torch",
                "error",
                f"{torch.__version__} is a CPU build, but {needs_cuda} needs CUDA: install a CUDA"
                " build (pip install -e '.[gpu]' brings vLLM's torch)",
            )
        return Check("torch", "ok", f"{torch.__version__} (CPU build)")
    return Check("torch", "ok", f"{torch.__version__} (CUDA {cuda})")


def driver_version(
    environ: Mapping[str, str], proc: Path = Path("/proc/driver/nvidia/version")
) -> tuple[str, str] | None:
    """(NVIDIA driver version, where it was read) from pynvml, nvidia-smi or /proc; None.
    (torch reports only the CUDA version the driver supports, not the driver's own.)"""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return (version.decode() if isinstance(version, bytes) else version), "pynvml"
    except Exception:  # not installed, no driver, no device: try the next source
        pass
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            lines = out.stdout.split()
            if out.returncode == 0 and lines:
                return lines[0], "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", proc.read_text())
    except OSError:
        return None
    return (m[1], str(proc)) if m else None


def check_driver(
    environ: Mapping[str, str],
    needs_cuda: str | None,
    proc: Path = Path("/proc/driver/nvidia/version"),
) -> Check:
    """The driver against torch's CUDA build: NVIDIA's minor-version compatibility lets any
    CUDA X.y toolkit run on a driver >= MIN_DRIVER[X]; an older one needs the forward
    compatibility package, which only some data-center setups install."""
    import torch

    found = driver_version(environ, proc)
    cuda = torch.version.cuda
    if found is None:
        if cuda and needs_cuda:
            return Check(
                "driver",
                "error",
                f"no NVIDIA driver found (pynvml, nvidia-smi, /proc/driver/nvidia/version) but"
                f" {needs_cuda} needs a GPU: run doctor on a GPU node (inside srun)",
            )
        return Check("driver", "ok", "no NVIDIA driver found (a CPU node)")
    version, source = found
    if not cuda:
        return Check("driver", "ok", f"{version} (from {source}); torch is a CPU build")
    major, minimum = int(cuda.split(".")[0]), MIN_DRIVER.get(int(cuda.split(".")[0]))
    if minimum is None:
        return Check(
            "driver",
            "warning",
            f"{version} (from {source}); torch is built for CUDA {cuda}, whose minimum driver"
            " is not known here: compare with NVIDIA's CUDA compatibility table",
        )
    if int(version.split(".")[0]) < minimum:
        return Check(
            "driver",
            "error",
            f"{version} (from {source}) is older than torch's CUDA {cuda} needs (>= {minimum}"
            f" for CUDA {major}.x): run on nodes with a newer driver (slurm.partition /"
            f" slurm.constraint), or install a torch built for an older CUDA",
        )
    return Check(
        "driver", "ok", f"{version} (from {source}); CUDA {cuda} needs >= {minimum}: new enough"
    )


def visible_gpus() -> list[tuple[str, int]]:
    """(name, total bytes) of each GPU torch sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append((props.name, props.total_memory))
    return out


def check_gpus(
    environ: Mapping[str, str],
    gpus: list[tuple[str, int]],
    rank: RankEnv | None,
    needs_cuda: str | None,
) -> list[Check]:
    """The GPUs torch sees and what bound them; whether this process's LOCAL_RANK has one."""
    bound = " ".join(f"{k}={environ[k]}" for k in BINDING_VARS if k in environ) or "no binding"
    seen = ", ".join(f"{name} ({total / GiB:.1f} GiB)" for name, total in gpus)
    facts = f"{len(gpus)} GPU(s){': ' + seen if gpus else ''}; {bound}"
    if not gpus:
        if needs_cuda:
            return [
                Check(
                    "gpus",
                    "error",
                    f"{facts}: {needs_cuda} needs a GPU: run doctor where the job runs"
                    " (srun --gpus-per-node=N ...), or use trainer.device=cpu rollout.engine=hf",
                )
            ]
        return [Check("gpus", "ok", facts)]
    checks = [Check("gpus", "ok", facts)]
    if rank is not None and rank.local_rank >= len(gpus):
        checks.append(
            Check(
                "gpus",
                "error",
                f"LOCAL_RANK={rank.local_rank} ({rank.source}) but this task sees {len(gpus)}"
                f" GPU(s) (CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r}): bind"
                " one GPU per task (slurm.gpu_binding=task) or let every task see the node's"
                " GPUs (slurm.gpu_binding=node)",
            )
        )
    return checks


def try_import(module: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """("ok", version) | ("missing", reason) | ("broken", the error's first line), from a child
    Python: a broken extension may crash the interpreter, and vllm is slow to import."""
    code = (
        "import sys\n"
        f"try:\n    import {module} as m\n"
        "except BaseException as e:\n"
        f"    missing = isinstance(e, ModuleNotFoundError) and e.name == {module!r}\n"
        "    line = (str(e).splitlines() or [''])[0]\n"
        "    print('missing' if missing else 'broken', f'{type(e).__name__}: {line}')\n"
        "    sys.exit(0)\n"
        "print('ok', getattr(m, '__version__', 'unknown version'))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=dict(environ),
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return "broken", f"import {module} took more than {IMPORT_TIMEOUT_S} s"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return "broken", f"import {module} crashed the interpreter: {tail}"
    verdict, _, text = out.stdout.strip().splitlines()[-1].partition(" ")
    return verdict, text


def check_vllm(environ: Mapping[str, str], rollout: RolloutConfig | None) -> Check:
    verdict, text = try_import("vllm", environ)
    if verdict == "ok":
        return Check("vllm", "ok", text)
    shown = "not installed" if verdict == "missing" else text
    if rollout is not None and rollout.engine == "vllm":
        return Check(
            "vllm",
            "error",
            f"{shown}, but rollout.engine=vllm needs it: pip install -e '.[gpu]' (vllm==0.26.0),"
            " or use rollout.engine=hf",
        )
    if verdict == "broken":
        return Check(
            "vllm",
            "warning",
            f"{shown}: reinstall it (pip install -e '.[gpu]') before using rollout.engine=vllm",
        )
    need = "rollout.engine=hf" if rollout is not None else "only rollout.engine=vllm needs it"
    return Check("vllm", "ok", f"{shown} ({need})")


def check_flash_attn(environ: Mapping[str, str], model: ModelConfig | None) -> Check:
    verdict, text = try_import("flash_attn", environ)
    if verdict == "ok":
        return Check("flash-attn", "ok", text)
    choice = model.attn_implementation if model is not None else "auto"
    shown = "not installed" if verdict == "missing" else text
    if choice == "flash_attention_2":
        return Check(
            "flash-attn",
            "error",
            f"{shown}, but model.attn_implementation=flash_attention_2 needs it: pip install -e"
            " '.[flash]' for this torch, or use model.attn_implementation=sdpa",
        )
    if verdict == "broken" and choice == "auto":  # installed: `auto` picks it on a GPU and fails
        return Check(
            "flash-attn",
            "error" if model is not None else "warning",
            f"{shown}: installed but does not import, and model.attn_implementation=auto picks"
            " it on a GPU: reinstall flash-attn built for this torch, or set"
            " model.attn_implementation=sdpa",
        )
    return Check("flash-attn", "ok", f"{shown} (model.attn_implementation={choice})")


def needs_cuda(cfg: Config | None) -> str | None:
    """The config key that makes the job need a GPU, if any."""
    if cfg is None:
        return None
    if cfg.rollout.engine == "vllm":
        return "rollout.engine=vllm"
    return "trainer.device=cuda" if cfg.trainer.device == "cuda" else None


def count_text(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below a tenth of a GiB (the tiny model's checkpoint)."""
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 1024**2:.1f} MiB"
