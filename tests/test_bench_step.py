"""bench/step.py reads its start-up figures from log lines: vLLM 0.26's wording, and the
engine's own split line as rollout/vllm_engine.py writes it."""

from __future__ import annotations

import importlib.util
import logging

from helpers import REPO

spec = importlib.util.spec_from_file_location("bench_step", REPO / "bench" / "step.py")
step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step)


def figures(lines: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in lines:
        for rx in step.FIGURES:
            m = rx.search(line)
            for name, value in (m.groupdict() if m else {}).items():
                found.setdefault(name, float(value))
    return found


def test_start_up_log_lines_give_their_figures(caplog):
    from hpc_ppo import tracking
    from hpc_ppo.rollout import preload, vllm_engine

    with caplog.at_level(logging.INFO):
        preload.log_import(9.46, 4.04)
        tracking.log_connected("sqlite:////runs/r/mlflow.db", 3.24)
        vllm_engine.log_engine_ready(started=0.0, ready=1.25, imported=11.0, now=45.5)
    assert figures(
        [
            "INFO [core.py:340] init engine (profile, create kv cache, warmup model) took 46.78 s"
            " (compilation: 22.18 s)",
            "INFO [monitor.py:53] torch.compile took 22.18 s in total",
            "INFO [model_runner.py:747] Graph capturing finished in 4 secs, took 0.39 GiB",
            *caplog.messages,
        ]
    ) == {
        "vllm_init_engine_s": 46.78,
        "vllm_compile_s": 22.18,
        "vllm_graph_capture_s": 4.0,
        "engine_s": 45.5,
        "engine_before_vllm_s": 1.2,  # %.1f of 1.25
        "engine_vllm_import_s": 9.8,
        "engine_llm_s": 34.5,
        "vllm_background_import_s": 9.5,
        "vllm_import_waited_s": 4.0,
        "mlflow_connect_s": 3.2,
    }
