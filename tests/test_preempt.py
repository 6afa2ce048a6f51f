"""preempt.requeue_slurm_job against a fake `scontrol` (the boundary): requeue when asked, say
so when Slurm already did, keep a cancel a cancel, and a requeue whose own TERM kills scontrol
is still a requeue (seen on the local cluster: "died with <Signals.SIGTERM: 15>")."""

from __future__ import annotations

import logging
import os

import pytest
from helpers import write_executable

from hpc_ppo.preempt import requeue_slurm_job

# State file: "<JobState> <Reason> <Restarts>"; `requeue` behaves as $MODE says.
SCONTROL = """#!/bin/sh
read state reason restarts < "$STATE"
case "$1" in
show) echo "JobId=7 JobState=$state Reason=$reason Restarts=$restarts" ;;
requeue)
  echo "$1 $2" >> "$CALLS"
  case "$MODE" in
  ok) echo "PENDING None $((restarts + 1))" > "$STATE" ;;
  killed) echo "PENDING None $((restarts + 1))" > "$STATE"; kill -TERM $$ ;;
  pending) echo "slurm_requeue error: Job is pending execution" >&2; exit 1 ;;
  *) echo "slurm_requeue error: Access/permission denied" >&2; exit 1 ;;
  esac ;;
esac
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """set(state, mode) for the fake scontrol on PATH; returns the requeue calls made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "scontrol", SCONTROL)
    calls = tmp_path / "calls"
    calls.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(tmp_path / "state"))
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)

    def set_(state: str, mode: str = "ok") -> None:
        (tmp_path / "state").write_text(state + "\n")
        monkeypatch.setenv("MODE", mode)

    set_.calls = lambda: calls.read_text().splitlines()
    return set_


def test_a_running_job_is_requeued(slurm, caplog):
    slurm("RUNNING None 1")
    with caplog.at_level(logging.INFO):
        assert requeue_slurm_job(4) is True
    assert slurm.calls() == ["requeue 7"]
    assert "requeued Slurm job 7; it will resume from step_4" in caplog.text


def test_a_requeue_whose_term_kills_scontrol_is_still_a_requeue(slurm, caplog):
    slurm("RUNNING None 1", mode="killed")
    with caplog.at_level(logging.INFO):
        assert requeue_slurm_job(4) is True
    assert "resubmit" not in caplog.text and "requeued Slurm job 7" in caplog.text


def test_a_refused_requeue_says_to_resubmit(slurm, caplog):
    slurm("RUNNING None 1", mode="denied")
    assert requeue_slurm_job(4) is False
    assert "permission denied; resubmit the job to continue" in caplog.text


def test_slurm_already_requeued_it(slurm, caplog):
    slurm("COMPLETING None 2")  # scontrol requeue / preemption counted the restart already
    with caplog.at_level(logging.INFO):
        assert requeue_slurm_job(4) is True
    assert slurm.calls() == [] and "Slurm requeued job 7" in caplog.text
    slurm("RUNNING None 1", mode="pending")  # a requeue raced ours
    assert requeue_slurm_job(4) is True


def test_a_cancelled_job_stays_cancelled(slurm, caplog):
    slurm("CANCELLED None 1")
    with caplog.at_level(logging.INFO):
        assert requeue_slurm_job(4) is False
    assert slurm.calls() == [] and "was cancelled (CANCELLED): not requeued" in caplog.text
