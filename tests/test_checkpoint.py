"""Checkpoints: atomic commit, resume after SIGKILL, resharding, bad checkpoints and bad resumes.

Run: python -m pytest tests/test_checkpoint.py -q

The in-process tests use a one-rank gloo group; the others run `hpc-ppo run` in subprocesses
(real ranks, real gloo, real MLflow sqlite store).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, TINY, cli, local_env, metrics, mlflow_run

from hpc_ppo import checkpoint as ckpt
from hpc_ppo.checkpoint import Checkpointable
from hpc_ppo.config import load_config
from hpc_ppo.errors import ConfigError
from hpc_ppo.model import build_tokenizer, load_critic, load_policy, shard


def resume(run_dir: Path, *overrides: str) -> str:
    """`hpc-ppo run RUN_DIR [overrides]` to completion; returns stdout + stderr."""
    proc = cli("run", str(run_dir), *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "continue with" not in out
    return out


def steps_logged(run_dir: Path) -> list[int]:
    return [row["step"] for row in metrics(run_dir, live=True)]


def assert_one_value_per_step(run_dir: Path, steps: int) -> None:
    client, run = mlflow_run(run_dir)
    for key in ("reward/mean", "actor/pg_loss", "critic/vf_loss", "time/step"):
        got = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert got == list(range(steps)), (key, got)


# ------------------------------------------------------------ a run killed while saving


@dataclass
class Killed:
    run_dir: Path
    step: int  # the checkpoint being written when the kill came: step_<step>.tmp


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Killed:
    """2 ranks, a checkpoint every step, SIGKILLed (launcher and ranks) while writing one.

    Leaves step_<N-1> complete and step_<N>.tmp partial: what a node failure, or the end of
    Slurm's KillWait during a save, leaves behind. The kill waits until the MLflow run exists:
    a kill while MLflow is still creating its sqlite schema (a few seconds of separately
    committed migrations) can leave a store no later job opens, a tracking.py matter.
    """
    out = tmp_path_factory.mktemp("killed")
    run_dir = out / "k"
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpc_ppo.cli", "run", TINY, f"trainer.output_dir={out}"]
            + ["trainer.run_name=k", "trainer.nprocs=2", "trainer.total_steps=20"]
            + ["trainer.save_every=1"],
            cwd=REPO,
            env=local_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one killpg reaches every rank
        )
    root = ckpt.checkpoint_root(run_dir)
    deadline = time.monotonic() + 300
    tmp: list[Path] = []
    while proc.poll() is None and time.monotonic() < deadline:
        if (run_dir / "mlflow_run_id").is_file() and ckpt.complete_steps(run_dir, warn=False):
            tmp = [p for p in root.iterdir() if p.name.endswith(".tmp")]
            if tmp:
                break
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(tmp) == 1 and tmp[0].is_dir(), (out / "run.log").read_text()
    return Killed(run_dir, int(tmp[0].name.removeprefix("step_").removesuffix(".tmp")))


def test_sigkill_during_save_leaves_the_previous_checkpoint(killed):
    root = ckpt.checkpoint_root(killed.run_dir)
    assert ckpt.complete_steps(killed.run_dir)[-1] == killed.step - 1
    assert not (root / f"step_{killed.step}").exists()
    assert not (root / f"step_{killed.step}.tmp" / ckpt.COMPLETE).exists()


@pytest.mark.slow
def test_resume_after_sigkill_skips_partial_folders_and_reshards_2_to_1_to_2(killed, tmp_path):
    run_dir, n = tmp_path / "k", killed.step
    shutil.copytree(killed.run_dir, run_dir)
    root = ckpt.checkpoint_root(run_dir)
    (root / "step_99.tmp").mkdir()
    (root / "step_99.tmp" / "__0_0.distcp").write_bytes(b"partial")
    shutil.copytree(root / f"step_{n - 1}", root / "step_98")
    (root / "step_98" / ckpt.COMPLETE).unlink()
    shutil.copytree(root / f"step_{n - 1}", root / "step_97")
    (root / "step_97" / "trainer.json").unlink()

    # 1. On one rank: the newest complete checkpoint, resharded; every other folder named once.
    out = resume(run_dir, "trainer.nprocs=1", f"trainer.total_steps={n + 1}")
    assert "1 rank(s) on this machine" in out
    assert f"resumed from {root}/step_{n - 1}: {n - 1} of {n + 1} steps done" in out, out
    assert f"checkpoint {root}/step_{n - 1} was written by 2 ranks, this job has 1" in out, out
    for name, why in (
        (f"step_{n}.tmp", "not a step_N folder"),
        ("step_97", "no trainer.json"),
        ("step_98", f"no {ckpt.COMPLETE}"),
        ("step_99.tmp", "not a step_N folder"),
    ):
        lines = [line for line in out.splitlines() if f"folder {root / name}:" in line]
        assert len(lines) == 1, (name, out)  # once: rank 0 only, not once per listing
        assert "skipping checkpoint folder" in lines[0] and why in lines[0], lines[0]
    assert ckpt.complete_steps(run_dir, warn=False) == [n, n + 1]
    assert not (root / f"step_{n}.tmp").exists()  # the redone save replaced it
    trainer_json = json.loads((root / f"step_{n + 1}" / "trainer.json").read_text())
    assert trainer_json["world_size"] == 1
    # Steps redone after the kill are logged once, in the file and in MLflow.
    assert sorted(steps_logged(run_dir)) == list(range(n + 1))
    assert_one_value_per_step(run_dir, n + 1)
    client, run = mlflow_run(run_dir)
    assert run.data.params["trainer.nprocs"] == "2"  # params are immutable: the first value
    assert run.data.params["trainer.total_steps"] == "20"
    assert run.data.tags["resumed.trainer.nprocs"] == "1"

    # 2. Back on two ranks.
    out = resume(run_dir, "trainer.nprocs=2", f"trainer.total_steps={n + 2}")
    assert f"checkpoint {root}/step_{n + 1} was written by 1 ranks, this job has 2" in out, out
    assert ckpt.complete_steps(run_dir, warn=False) == [n + 1, n + 2]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["nprocs"] == 2
    assert sorted(steps_logged(run_dir)) == list(range(n + 2))
    assert_one_value_per_step(run_dir, n + 2)
    client, run = mlflow_run(run_dir)
    assert run.data.params["trainer.nprocs"] == "2"
    assert run.data.tags["resumed.trainer.total_steps"] == str(n + 2)
    # The tag tells what the latest job ran with, not a value of an earlier resume.
    assert run.data.tags["resumed.trainer.nprocs"] == "2", run.data.tags


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_is_a_clear_error(killed, tmp_path):
    run_dir = tmp_path / "k"
    shutil.copytree(killed.run_dir, run_dir)
    config = run_dir / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["tiny"]["hidden_size"] == 64
    raw["model"]["tiny"]["hidden_size"] = 128
    config.write_text(yaml.safe_dump(raw))
    proc = cli("run", str(run_dir), "trainer.nprocs=1")  # one rank fails as well, and sooner
    assert proc.returncode != 0
    path = ckpt.checkpoint_root(run_dir) / f"step_{killed.step - 1}"
    assert f"checkpoint {path} does not fit this model: Size mismatch" in proc.stderr
    assert "saved torch.Size([64, 64]) and current: torch.Size([64, 128])" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_resume_refuses_a_changed_experiment_key_and_changes_nothing(killed):
    before = (killed.run_dir / "config.yaml").read_bytes()
    proc = cli("run", str(killed.run_dir), "trainer.total_steps=9", "actor.lr=0.5")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: actor.lr: cannot change when resuming {killed.run_dir}")
    assert "trainer.total_steps" not in proc.stderr.split("(only")[0]
    assert "rank(s) on this machine" not in proc.stdout  # nothing was started
    assert (killed.run_dir / "config.yaml").read_bytes() == before


# ------------------------------------------------------------ in one process, one gloo rank


def _parts(hidden: int, sharded: bool = False) -> list[Checkpointable]:
    """Policy and critic with AdamW and a scheduler; `sharded`: FSDP2 on this one rank, so the
    checkpointed state is DTensors, as in a run."""
    cfg = load_config(TINY, [f"model.tiny.hidden_size={hidden}"])
    tok = build_tokenizer(cfg.model)
    parts = []
    for name, model in (
        ("policy", load_policy(cfg.model, tok, 0)),
        ("critic", load_critic(cfg.model, tok, 0)),
    ):
        if sharded:
            model = shard(model, torch.device("cpu"), mixed_bf16=False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
        parts.append(Checkpointable(name, model, opt, sched))
    return parts


def _train_a_little(parts: list[Checkpointable]) -> None:
    for p in parts:
        loss = sum(w.square().sum() for w in p.model.parameters())
        loss.backward()
        p.optimizer.step()
        p.scheduler.step()


def test_save_load_roundtrip_restores_weights_optimizer_scheduler_and_rng(one_rank, tmp_path):
    parts = _parts(64)
    _train_a_little(parts)
    ckpt.save(tmp_path, 1, parts, {"sampler": {"position": 7}}, keep=2)
    saved = [{k: v.clone() for k, v in p.model.state_dict().items()} for p in parts]
    expected_draw = torch.rand(3)

    other = _parts(64)
    torch.manual_seed(123)
    state = ckpt.load(ckpt.resolve_step(tmp_path, None), other)
    assert state["sampler"] == {"position": 7} and state["step"] == 1 and state["world_size"] == 1
    assert torch.equal(torch.rand(3), expected_draw)  # this rank's RNG stream continues
    for p, want in zip(other, saved, strict=True):
        assert all(torch.equal(p.model.state_dict()[k], v) for k, v in want.items()), p.name
        assert p.scheduler.last_epoch == 1
        assert p.optimizer.state_dict()["state"][0]["step"] == 1


def test_save_replaces_a_stale_tmp_and_keeps_the_last_k(one_rank, tmp_path):
    parts = _parts(64)
    stale = ckpt.checkpoint_root(tmp_path) / "step_2.tmp"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a killed save")
    for step in (1, 2, 3):
        ckpt.save(tmp_path, step, parts, {}, keep=2)
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()) == ["step_2", "step_3"]
    assert not (ckpt.checkpoint_root(tmp_path) / "step_2" / "junk").exists()


def test_loading_a_checkpoint_of_another_shape_names_it(one_rank, tmp_path):
    ckpt.save(tmp_path, 4, _parts(64), {}, keep=2)
    path = ckpt.resolve_step(tmp_path, None)
    with pytest.raises(ConfigError) as e:
        ckpt.load(path, _parts(128))
    text = str(e.value)
    assert text.startswith(f"checkpoint {path} does not fit this model: Size mismatch between")
    assert "torch.Size([64, 64]) and current: torch.Size([64, 128]) for " in text
    assert "model.tiny" in text and "\n" not in text


def test_a_damaged_checkpoint_says_so_and_moving_it_aside_resumes_the_one_before(
    one_rank, tmp_path
):
    parts = _parts(64)
    for step in (1, 2):
        ckpt.save(tmp_path, step, parts, {}, keep=2)
    path = ckpt.resolve_step(tmp_path, None)
    for f in path.glob("*.distcp"):  # cut short, as a failing file system might
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ConfigError) as e:
        ckpt.load(path, _parts(64))
    text = str(e.value)
    assert text.startswith(f"checkpoint {path} could not be read: RuntimeError: ")
    assert "does not fit" not in text and "\n" not in text
    assert text.endswith(
        f"(mv {path} {path}.bad) and the run resumes from the checkpoint before it"
    )
    path.rename(f"{path}.bad")  # what the message says to do
    assert ckpt.resolve_step(tmp_path, None).name == "step_1"
    assert ckpt.load(ckpt.resolve_step(tmp_path, None), _parts(64))["step"] == 1


def test_step_listing_is_numeric_and_skips_incomplete_folders(tmp_path, caplog):
    root = ckpt.checkpoint_root(tmp_path)
    for step in (3, 12, 9):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / ckpt.COMPLETE).write_text("")
        (root / f"step_{step}" / "trainer.json").write_text("{}")
    (root / "step_13").mkdir()
    (root / "step_14.tmp").mkdir()
    with caplog.at_level(logging.WARNING, logger="hpc_ppo.checkpoint"):
        assert ckpt.complete_steps(tmp_path) == [3, 9, 12]
    assert len(caplog.records) == 2
    assert ckpt.resolve_step(tmp_path, None) == root / "step_12"
    with pytest.raises(ConfigError, match=r"--step 5 not found: .* has steps \[3, 9, 12\]"):
        ckpt.resolve_step(tmp_path, 5)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        ckpt.resolve_step(tmp_path / "nothing", None)
