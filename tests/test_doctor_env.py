"""The doctor's checks of the node's surroundings: socket-interface variables, multicast and the
TP all-reduce, the Slurm job and rank, and the folders a run writes (probed for real, in
tmp_path; free space faked through shutil.disk_usage).

Run: python -m pytest tests/test_doctor_env.py -q
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import namedtuple

import pytest

from hpc_ppo.config import RolloutConfig
from hpc_ppo.doctor_env import (
    check_allreduce,
    check_folder,
    check_folders,
    check_network_env,
    check_rank,
    check_slurm,
    interface_matches,
)

NICS = ["lo", "eth0", "ib0", "ib1"]


@pytest.mark.parametrize(
    ("spec", "nccl", "selected"),
    [
        ("ib", True, ["ib0", "ib1"]),  # NCCL: a prefix
        ("=ib", True, []),  # NCCL: exact names only
        ("^lo,ib", True, ["eth0"]),  # NCCL: everything but these prefixes
        ("ib", False, []),  # gloo: exact names
        ("eth0,ib1", False, ["eth0", "ib1"]),
    ],
)
def test_interface_selection(spec, nccl, selected):
    assert interface_matches(spec, NICS, prefix=nccl) == selected


def test_variables_are_listed_and_named_interfaces_checked():
    environ = {"NCCL_SOCKET_IFNAME": "ib", "GLOO_SOCKET_IFNAME": "bond0", "NCCL_DEBUG": "INFO"}
    listed, nccl, gloo = check_network_env(environ, 1, NICS)
    assert listed.message == "GLOO_SOCKET_IFNAME=bond0 NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=ib"
    assert (nccl.status, nccl.message) == ("ok", "NCCL_SOCKET_IFNAME=ib -> ib0, ib1")
    assert gloo.status == "error"
    assert "GLOO_SOCKET_IFNAME=bond0 selects no interface" in gloo.message
    assert "lo, eth0, ib0, ib1" in gloo.message and "unset it" in gloo.message


def test_loopback_only_is_an_error_across_nodes():
    environ = {"NCCL_SOCKET_IFNAME": "lo"}
    assert check_network_env(environ, 1, NICS)[1].status == "ok"
    bad = check_network_env(environ, 2, NICS)[1]
    assert bad.status == "error" and "slurm.nodes" in bad.message and "eth0, ib0" in bad.message


def test_network_env_reads_this_nodes_interfaces():
    (listed,) = check_network_env({}, 1)
    assert listed.message == "none set (NCCL's defaults)"
    lo = check_network_env({"GLOO_SOCKET_IFNAME": "lo"}, 1)[1]
    assert lo.status == "ok"  # every Linux node has a loopback interface


def test_allreduce_follows_the_projects_plan():
    tp2 = RolloutConfig(engine="vllm", tp=2, allreduce="custom")
    environ = {"VLLM_FLASHINFER_ALLREDUCE_BACKEND": "mnnvl", "NCCL_NVLS_ENABLE": "0"}
    ok = check_allreduce(environ, tp2)
    assert ok.status == "ok"
    assert "overrides VLLM_FLASHINFER_ALLREDUCE_BACKEND=mnnvl" in ok.message
    assert (
        "NCCL_NVLS_ENABLE=0" in ok.message
        and "TORCH_SYMM_MEM_DISABLE_MULTICAST=unset" in ok.message
    )
    refused = check_allreduce(environ, RolloutConfig(engine="vllm", tp=2, allreduce="vllm"))
    assert refused.status == "error" and "use rollout.allreduce=custom" in refused.message
    risky = check_allreduce({}, RolloutConfig(engine="vllm", tp=2, allreduce="vllm"))
    assert risky.status == "warning" and "rollout.allreduce=custom" in risky.message
    assert "rollout.tp=1" in check_allreduce(environ, RolloutConfig(engine="vllm")).message


SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_RESTART_COUNT": "1",
}


def test_slurm_job_and_the_rank_it_gives():
    assert check_slurm({}).message == "not in a Slurm job (SLURM_JOB_ID unset)"
    job = check_slurm(SLURM_STEP)
    assert job.message == "job 4242, 2 node(s) gpu[07-08], 16 task(s), restart 1, step 0"
    batch = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_ID"}
    assert "the batch shell, not a step" in check_slurm(batch).message
    check, env = check_rank(SLURM_STEP)
    assert check.status == "ok" and env is not None
    assert (env.rank, env.local_rank, env.world_size, env.master_addr) == (9, 1, 16, "gpu07")
    assert "rank 9 of 16, local rank 1 of 8, node 1, rendezvous gpu07:" in check.message


def test_a_bad_slurm_variable_is_an_error_naming_it():
    check, env = check_rank({**SLURM_STEP, "SLURM_PROCID": "nine"})
    assert env is None
    assert (check.status, check.message) == ("error", "SLURM_PROCID='nine' is not an integer")


# ---------------------------------------------------------------- folders


def test_folder_writable_and_probe_removed(tmp_path):
    check = check_folder("output_dir", tmp_path, "trainer.output_dir", True)
    assert check.status == "ok" and "writable" in check.message
    assert list(tmp_path.iterdir()) == []
    later = check_folder("output_dir", tmp_path / "a" / "b", "trainer.output_dir", True)
    assert later.status == "ok" and f"(to be created in {tmp_path})" in later.message
    assert not (tmp_path / "a").exists()


def test_read_only_folder(tmp_path, monkeypatch):
    """A folder without write permission. Root ignores permission bits, so there the refusal
    the kernel would give is made at the probe's boundary too."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(ro))

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    try:
        required = check_folder("output_dir", ro / "runs", "trainer.output_dir", True)
        optional = check_folder("hf-cache", ro, "HF_HOME", False)
    finally:
        ro.chmod(0o755)
    assert required.status == "error"
    assert "cannot write there (Permission denied)" in required.message
    assert "set trainer.output_dir to a writable folder" in required.message
    assert optional.status == "warning" and "set HF_HOME" in optional.message


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "f").write_text("x")
    check = check_folder("tmpdir", tmp_path / "f", "TMPDIR", True)
    assert check.status == "error" and "is not a folder: set TMPDIR" in check.message


def test_low_free_space_is_a_warning(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 1024**3, 0, 1024**3))
    check = check_folder("vllm-cache", tmp_path, "VLLM_CACHE_ROOT", True)
    assert check.status == "warning"
    assert "1.0 GiB free" in check.message and "set VLLM_CACHE_ROOT elsewhere" in check.message


def test_folders_of_a_vllm_run_are_its_cache_dir(tmp_path):
    triton = tmp_path / "triton"
    environ = {"HOME": str(tmp_path), "TMPDIR": str(tmp_path), "TRITON_CACHE_DIR": str(triton)}
    plain = {c.name: c for c in check_folders(environ, str(tmp_path / "runs"), None)}
    assert plain["triton-cache"].message.startswith(f"{triton} (to be created")
    assert str(tmp_path / ".cache" / "vllm") in plain["vllm-cache"].message
    run = {c.name: c for c in check_folders(environ, str(tmp_path), tmp_path / "cache")}
    assert str(tmp_path / "cache" / "triton") in run["triton-cache"].message  # the engine's
    assert run["vllm-cache"].status == "ok"
    assert set(run) == {"output_dir", "vllm-cache", "triton-cache", "hf-cache", "tmpdir"}
