"""console.py: the step line, the Slurm time left (squeue asked once), the bar only on a TTY.

Run: python -m pytest tests/test_console.py -q
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from hpc_ppo import console


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str) -> Path:
    calls = tmp_path / "calls"
    script = tmp_path / "squeue"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho '{out}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_slurm_end_time_asks_squeue_for_the_job(tmp_path, monkeypatch) -> None:
    calls = fake_squeue(tmp_path, monkeypatch, "2030-01-02T03:04:05")
    end = console.slurm_end_time({"SLURM_JOB_ID": "42"})
    assert end is not None and calls.read_text().split() == ["-h", "-j", "42", "-o", "%e"]
    assert console.slurm_end_time({}) is None  # no job: no squeue call
    fake_squeue(tmp_path, monkeypatch, "UNLIMITED")
    assert console.slurm_end_time({"SLURM_JOB_ID": "42"}) is None


def test_one_record_per_step_with_eta_and_time_left(tmp_path, monkeypatch, caplog) -> None:
    calls = fake_squeue(tmp_path, monkeypatch, "2099-01-01T00:00:00")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    steps = console.StepLog(start=2, total=10)
    metrics = {"reward/mean": 0.5, "actor/kl_ref": 0.01, "actor/entropy": 2.0}
    with caplog.at_level(logging.INFO, logger="hpc_ppo.progress"), steps.active():
        for done in (3, 4):
            steps.step(done, {**metrics, "response/length_mean": 7.0, "time/step": 1.5})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and steps.bar is None
    assert lines[0].startswith("step 3/10 | reward 0.5000 | kl 0.01 | entropy 2 | len 7.0")
    assert "1.50 s/step" in lines[1] and " | eta " in lines[1] and " | slurm left " in lines[1]
    assert len(calls.read_text().splitlines()) == 1  # once per job, not per step


def test_other_ranks_print_nothing(caplog) -> None:
    steps = console.StepLog(start=0, total=2, enabled=False)
    with caplog.at_level(logging.INFO, logger="hpc_ppo.progress"), steps.active():
        steps.step(1, {"reward/mean": 1.0})
    assert not caplog.records and steps.bar is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown_lines(written: str) -> list[str]:
    """What a terminal shows: each line as the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in written.split("\n")]


def test_on_a_terminal_records_never_share_the_bars_line(
    tmp_path, monkeypatch, restore_logging
) -> None:
    from hpc_ppo.runlog import setup_logging

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    setup_logging(tmp_path, 0, {})  # its console handler writes to the patched stderr
    steps = console.StepLog(start=0, total=3)
    with steps.active():
        assert steps.bar is not None
        for done in (1, 2, 3):
            logging.getLogger("hpc_ppo.other").warning("something %d", done)
            steps.step(done, {"reward/mean": 0.5})
    lines = shown_lines(term.getvalue())
    records = [line for line in lines if "[rank 0]" in line]
    assert len(records) == 6, lines
    assert all(line.startswith("20") and "ppo:" not in line for line in records), lines
    assert any(line.startswith("ppo: 100%") for line in lines), lines
