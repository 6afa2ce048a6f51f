"""rollout/compile.py: rollout.compile decides vLLM's compilation_config, merged with the
all-reduce plan's; the CUDA graphs cover the step's batch, not vLLM's 512."""

import pytest
from helpers import TINY

from hpc_ppo.config import load_config
from hpc_ppo.errors import ConfigError
from hpc_ppo.rollout.compile import compilation_config, describe, graph_batch_limit
from hpc_ppo.rollout.make import sequences_per_step

CUSTOM = {"pass_config": {"fuse_allreduce_rms": False}}
FUSED = {"pass_config": {"fuse_allreduce_rms": True}}


def test_compile_keeps_vllms_defaults_but_the_graph_sizes():
    assert compilation_config(True, False, None, 256) == {"max_cudagraph_capture_size": 256}
    assert compilation_config(True, False, CUSTOM, 64) == {
        **CUSTOM,
        "max_cudagraph_capture_size": 64,
    }
    assert compilation_config(True, False, FUSED, 8)["pass_config"] == FUSED["pass_config"]
    # eager: no graphs and vLLM compiles nothing, so only the all-reduce plan goes through
    assert compilation_config(False, True, CUSTOM, 256) == CUSTOM
    assert compilation_config(True, True, None, 256) is None


def test_no_compile_captures_whole_decode_steps():
    assert compilation_config(False, False, None, 256) == {
        "max_cudagraph_capture_size": 256,
        "mode": 0,
        "cudagraph_mode": "FULL_DECODE_ONLY",
    }
    merged = compilation_config(False, False, CUSTOM, 128)
    assert merged == {
        **CUSTOM,
        "max_cudagraph_capture_size": 128,
        "mode": 0,
        "cudagraph_mode": "FULL_DECODE_ONLY",
    }
    assert CUSTOM == {"pass_config": {"fuse_allreduce_rms": False}}  # the plan is not edited


@pytest.mark.parametrize(
    "sequences, limit",
    [
        (1, 1),
        (3, 4),
        (4, 4),
        (5, 8),
        (8, 8),
        (9, 16),
        (250, 256),
        (256, 256),
        (257, 272),
        (500, 512),
        (512, 512),
        (4096, 512),
    ],
)
def test_graphs_cover_the_steps_batch_on_vllms_capture_sizes(sequences, limit):
    # vLLM captures 1, 2, 4, multiples of 8 to 256, then of 16; a limit off that grid would
    # leave the last sizes of the step's batch without a graph
    assert graph_batch_limit(None, sequences) == limit


def test_the_key_overrides_the_step_count():
    assert graph_batch_limit(48, 256) == 48
    assert graph_batch_limit(1024, 8) == 1024


def test_sequences_per_step_counts_the_tp_groups_prompts():
    cfg = load_config(TINY, ["trainer.batch_size=32", "rollout.n=8"])
    assert sequences_per_step(cfg, 1) == 256
    assert sequences_per_step(cfg, 2) == 128
    cfg = load_config(TINY, ["trainer.batch_size=30", "algo.mini_batch_size=10", "rollout.n=4"])
    assert sequences_per_step(cfg, 4) == 32  # 8 prompts on the busiest rank
    gpu = ["rollout.engine=vllm", "trainer.device=cuda", "trainer.nprocs=2", "rollout.tp=2"]
    cfg = load_config(TINY, [*gpu, "trainer.batch_size=32", "rollout.n=8"], launcher="local")
    assert sequences_per_step(cfg, 2) == 256  # each engine generates for both ranks


@pytest.mark.parametrize(
    "switch, named",
    [
        ("rollout.compile=false", "rollout.compile=false"),
        ("rollout.enforce_eager=true", "enforce_eager"),
    ],
)
def test_config_refuses_fusion_without_compile(switch, named):
    overrides = ["rollout.engine=vllm", "trainer.device=cuda", "rollout.tp=2", "trainer.nprocs=2"]
    with pytest.raises(ConfigError, match=f"rollout.allreduce=fused.*{named}.*allreduce=custom"):
        load_config(TINY, [*overrides, "rollout.allreduce=fused", switch], launcher="local")
    load_config(TINY, [*overrides, switch], launcher="local")
    load_config(TINY, [*overrides, "rollout.allreduce=fused"], launcher="local")


def test_the_engine_says_how_it_runs_the_model():
    assert describe(True, False, 256).startswith("torch.compile + CUDA graphs")
    assert "batches up to 256 (rollout.cudagraph_max_batch)" in describe(True, False, 256)
    assert "rollout.compile=false" in describe(False, False, 64)
    assert "up to 64" in describe(False, False, 64)
    assert "enforce_eager" in describe(True, True, 8) and "enforce_eager" in describe(
        False, True, 8
    )
