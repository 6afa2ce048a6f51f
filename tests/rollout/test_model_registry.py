"""rollout/model_registry.py: vLLM's model inspection runs in this process while the engine
starts, and vLLM's own function is back afterwards (a fake registry module: no vLLM on CPU)."""

import os
import sys
import types

import pytest

from hpc_ppo.rollout.model_registry import models_inspected_in_process


@pytest.fixture
def registry(monkeypatch) -> types.ModuleType:
    module = types.ModuleType("fake_vllm_registry")

    def shipped(fn):  # what vLLM does: run fn somewhere else
        raise AssertionError("a subprocess was started")

    module._run_in_subprocess = shipped
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_inspection_runs_here_and_vllms_function_comes_back(registry):
    shipped = registry._run_in_subprocess
    with models_inspected_in_process(registry.__name__) as patched:
        assert patched
        assert registry._run_in_subprocess(os.getpid) == os.getpid()
    assert registry._run_in_subprocess is shipped


def test_restored_when_the_engine_start_fails(registry):
    shipped = registry._run_in_subprocess
    with pytest.raises(RuntimeError, match="engine failed"):
        with models_inspected_in_process(registry.__name__):
            raise RuntimeError("engine failed")
    assert registry._run_in_subprocess is shipped


def test_other_vllm_versions_are_left_alone(registry):
    del registry._run_in_subprocess
    with models_inspected_in_process(registry.__name__) as patched:
        assert not patched
        assert not hasattr(registry, "_run_in_subprocess")
    with models_inspected_in_process("no_such_vllm_module") as patched:
        assert not patched
