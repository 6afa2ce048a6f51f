"""vLLM's import in a background thread, while the trainer builds its models and restores the
checkpoint; the engine starts after both.

    hpc-ppo run RUN_DIR      # a requeue: the restore and vLLM's import overlap

Importing vLLM takes 8-10 s on a GPU host (docs/PERFORMANCE.md, fourth lease), the restore of a
0.5B run 2-5 s, and the model build of a 7B run 9.5 s: both spend much of their time in file
reads and tensor copies, which leave the interpreter to the import. The engine's own
`from vllm import LLM` then waits for this import (Python's per-module lock) instead of running
it. The caches are pointed first: vLLM and FlashInfer read their variables at import.

The overlap saves less than it seemed: the import, the build and the restore are mostly
Python on one interpreter, and take turns on it (bench/start_overlap.py on an H200 host: a
14.1 s window beside against 15.0 s in turn; docs/PERFORMANCE.md, sixth lease).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hpc_ppo.config import RolloutConfig

log = logging.getLogger(__name__)


class EngineImport:
    """Started for `rollout.engine=vllm` (the HF engine imports nothing new); `wait()` returns
    the import's seconds, or None when there was none. A failed import is not raised here: the
    engine's own import fails the same way, in the main thread, with vLLM's message."""

    def __init__(self, rollout: RolloutConfig, run_dir: Path) -> None:
        self.seconds: float | None = None
        self.thread: threading.Thread | None = None
        if rollout.engine != "vllm":
            return
        from hpc_ppo.rollout.vllm_engine import cache_root, point_caches  # no vllm import

        point_caches(cache_root(rollout, run_dir.parent))
        self.thread = threading.Thread(target=self._run, name="vllm-import", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            from vllm import LLM  # noqa: F401  (the attribute pulls in vLLM's engine modules)
        except BaseException:  # noqa: BLE001  (re-raised by the engine's own import)
            log.debug("vLLM's background import failed", exc_info=True)
        self.seconds = time.perf_counter() - start

    def wait(self) -> float | None:
        """Join the import (logging how long it took and how long this waited for it)."""
        if self.thread is None:
            return None
        start = time.perf_counter()
        self.thread.join()
        log_import(self.seconds or 0.0, time.perf_counter() - start)
        return self.seconds


def log_import(seconds: float, waited: float) -> None:
    """The line bench/step.py reads (tests/test_bench_step.py)."""
    log.info(
        "vLLM imported in %.1f s beside the models and the restore (%.1f s waited)", seconds, waited
    )
