"""vLLM's caches: `rollout.cache_dir`, else `<trainer.output_dir>/.cache` (one per output_dir,
shared by its runs and their requeues). The engine's own call is checked in tests/gpu."""

from __future__ import annotations

from pathlib import Path

from hpc_ppo.config import RolloutConfig
from hpc_ppo.rollout.vllm_engine import cache_root


def test_cache_root_is_under_the_output_dir_unless_given(tmp_path):
    assert cache_root(RolloutConfig(), tmp_path / "runs") == tmp_path / "runs" / ".cache"
    given = RolloutConfig(cache_dir=str(tmp_path / "c"))
    assert cache_root(given, tmp_path / "runs") == Path(tmp_path / "c").resolve()
