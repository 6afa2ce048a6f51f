"""Fixtures for every test folder. The plain values and functions they build on (REPO, TINY,
`cli`, `run_ok`, `metrics`, `final_weights`, ...) are in helpers.py, importable by name.

tests/gpu/conftest.py and tests/slurm/conftest.py add what only those suites need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import TINY, gloo_rank, run_ok


@pytest.fixture
def one_rank() -> Iterator[None]:
    """A one-rank gloo group in this process for the test's duration."""
    with gloo_rank():
        yield


@pytest.fixture
def run_tiny(tmp_path: Path) -> Callable[..., Path]:
    """`run_tiny(*overrides)`: `hpc-ppo run configs/tiny-cpu.yaml` into tmp_path, which must
    succeed; returns the run folder."""

    def _run(*overrides: str, timeout: float = 600) -> Path:
        return run_ok(TINY, f"trainer.output_dir={tmp_path}", *overrides, timeout=timeout)

    return _run


@pytest.fixture
def fake_gpus(monkeypatch) -> Callable[..., None]:
    """`fake_gpus(n, gib, name)`: torch.cuda reports n GPUs of `gib` GiB (CPU-only tests of
    what reads the GPUs; nothing is allocated)."""
    import types

    import torch

    def _set(n: int, gib: float, name: str = "NVIDIA GeForce RTX 4090") -> None:
        props = types.SimpleNamespace(name=name, total_memory=int(gib * 1024**3))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)

    return _set


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Root logging as it was before the test (for tests that call runlog.setup_logging)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.captureWarnings(False)
