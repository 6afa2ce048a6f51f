"""RUN_DIR/run.log: rank 0's records, every rank's warnings, appended, the restart in each.

Run: python -m pytest tests/test_runlog.py -q
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpc_ppo.runlog import LOG_FILE, restart_count, setup_logging


def test_restart_count_reads_slurm_and_defaults_to_zero() -> None:
    assert restart_count({}) == 0
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert restart_count({"SLURM_RESTART_COUNT": "x"}) == 0
    # outside Slurm the local launcher's count of earlier starts; Slurm's wins inside a job
    assert restart_count({"HPC_PPO_RESTART": "3"}) == 3
    assert restart_count({"SLURM_RESTART_COUNT": "1", "HPC_PPO_RESTART": "3"}) == 1


def test_log_file_appends_across_restarts_with_the_count(
    tmp_path: Path, restore_logging: None
) -> None:
    log = logging.getLogger("hpc_ppo.test_runlog")
    setup_logging(tmp_path, 0, {})
    log.info("first job")
    setup_logging(tmp_path, 1, {"SLURM_RESTART_COUNT": "1"})  # another rank of the next job
    log.info("rank 1 info: not recorded")
    log.warning("rank 1 warning")
    setup_logging(tmp_path, 0, {"SLURM_RESTART_COUNT": "1"})
    log.info("second job")
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert len(lines) == 3, lines
    assert "[restart 0] [rank 0] INFO" in lines[0] and lines[0].endswith("first job")
    assert "[restart 1] [rank 1] WARNING" in lines[1]
    assert "[restart 1] [rank 0] INFO" in lines[2] and lines[2].endswith("second job")
