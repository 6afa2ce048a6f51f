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

    def shipped(fn):  # what vLLM does: run fn somewhere else (here: records that it did)
        module.subprocess_runs.append(fn)
        return "from a subprocess"

    module.subprocess_runs = []

    module._run_in_subprocess = shipped
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_inspection_runs_here_and_vllms_function_comes_back(registry):
    shipped = registry._run_in_subprocess
    with models_inspected_in_process(registry.__name__) as patched:
        assert patched
        assert registry._run_in_subprocess(os.getpid) == os.getpid()
    assert registry._run_in_subprocess is shipped
    assert registry.subprocess_runs == []


def test_an_inspection_failing_here_is_retried_vllms_way(registry, caplog):
    def inspect():
        raise ImportError("needs a fresh interpreter")

    with models_inspected_in_process(registry.__name__):
        assert registry._run_in_subprocess(inspect) == "from a subprocess"
    assert registry.subprocess_runs == [inspect]
    assert "needs a fresh interpreter" in caplog.text


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
