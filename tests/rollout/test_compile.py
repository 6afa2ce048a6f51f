"""rollout/compile.py: rollout.compile decides vLLM's compilation_config, merged with the
all-reduce plan's."""

import pytest
from helpers import TINY

from hpc_ppo.config import load_config
from hpc_ppo.errors import ConfigError
from hpc_ppo.rollout.compile import compilation_config, describe

CUSTOM = {"pass_config": {"fuse_allreduce_rms": False}}
FUSED = {"pass_config": {"fuse_allreduce_rms": True}}


def test_compile_keeps_vllms_defaults():
    assert compilation_config(True, False, None) is None
    assert compilation_config(True, False, CUSTOM) == CUSTOM
    assert compilation_config(True, False, FUSED) == FUSED
    assert compilation_config(False, True, CUSTOM) == CUSTOM  # eager: vLLM compiles nothing


def test_no_compile_captures_whole_decode_steps():
    assert compilation_config(False, False, None) == {
        "mode": 0,
        "cudagraph_mode": "FULL_DECODE_ONLY",
    }
    merged = compilation_config(False, False, CUSTOM)
    assert merged == {**CUSTOM, "mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    assert CUSTOM == {"pass_config": {"fuse_allreduce_rms": False}}  # the plan is not edited


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
    assert describe(True, False) == "torch.compile + CUDA graphs"
    assert "rollout.compile=false" in describe(False, False)
    assert "enforce_eager" in describe(True, True) and "enforce_eager" in describe(False, True)
