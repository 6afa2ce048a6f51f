"""launch/local.py: the local launcher counts the starts of a run folder (run.log's restart)."""

from pathlib import Path

from hpc_ppo.launch.local import _count_start


def test_each_start_of_a_run_folder_is_counted(tmp_path: Path) -> None:
    assert [_count_start(tmp_path) for _ in range(3)] == [0, 1, 2]
    (tmp_path / "local_starts").write_text("garbage\n")  # a hand-edited file starts over
    assert _count_start(tmp_path) == 0
    assert (tmp_path / "local_starts").read_text() == "1\n"
