"""rollout/preload.py: vLLM's import runs in a thread, after the caches are pointed, and the
engine's own import then finds it done (a fake vllm package: no vLLM on CPU)."""

import os
import sys
from pathlib import Path

import pytest
from helpers import TINY

from hpc_ppo.config import load_config
from hpc_ppo.rollout.preload import EngineImport
from hpc_ppo.rollout.vllm_engine import CACHE_VARS

FAKE_VLLM = """
import os, threading, time
SEEN = {"thread": threading.current_thread().name, "cache": os.environ.get("VLLM_CACHE_ROOT")}
time.sleep(0.3)
LLM = "the engine class"
"""


def install_fake_vllm(tmp_path: Path, monkeypatch, source: str) -> None:
    """A `vllm` package with `source` first on sys.path; the cache variables the import points
    are put back afterwards (monkeypatch), so no later test sees this test's folders."""
    (tmp_path / "fake" / "vllm").mkdir(parents=True)
    (tmp_path / "fake" / "vllm" / "__init__.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for var in CACHE_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    install_fake_vllm(tmp_path, monkeypatch, FAKE_VLLM)
    yield
    sys.modules.pop("vllm", None)


def vllm_config(tmp_path: Path):
    gpu = ["rollout.engine=vllm", "trainer.device=cuda", f"trainer.output_dir={tmp_path}"]
    return load_config(TINY, gpu, launcher="local")


def test_vllm_is_imported_in_a_thread_after_the_caches_are_pointed(tmp_path, fake_vllm):
    started = EngineImport(vllm_config(tmp_path).rollout, tmp_path / "run")
    assert started.thread is not None and started.thread.is_alive()  # the caller goes on
    seconds = started.wait()
    import vllm

    assert seconds is not None and seconds >= 0.3
    assert vllm.SEEN["thread"] == "vllm-import"
    assert vllm.SEEN["cache"] == str(tmp_path / ".cache" / "vllm")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / ".cache" / "triton")


def test_the_engines_own_import_waits_for_the_thread(tmp_path, fake_vllm):
    started = EngineImport(vllm_config(tmp_path).rollout, tmp_path / "run")
    import vllm
    from vllm import LLM  # while the thread still imports it: Python's module lock waits

    assert LLM == "the engine class" and started.wait() is not None
    assert vllm.SEEN["thread"] == "vllm-import"  # run once, by the thread, not again here


def test_a_failed_import_is_left_to_the_engine(tmp_path, monkeypatch):
    install_fake_vllm(tmp_path, monkeypatch, "raise ImportError('no CUDA here')")
    started = EngineImport(vllm_config(tmp_path).rollout, tmp_path / "run")
    assert started.wait() is not None  # no exception from the thread
    with pytest.raises(ImportError, match="no CUDA here"):  # the engine's import says why
        import vllm  # noqa: F401
    sys.modules.pop("vllm", None)


def test_the_hf_engine_imports_nothing(tmp_path):
    started = EngineImport(load_config(TINY).rollout, tmp_path / "run")
    assert started.thread is None and started.wait() is None
