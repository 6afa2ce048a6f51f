"""rollout/allreduce.py: the project, not vLLM's defaults, decides the TP all-reduce path."""

from __future__ import annotations

import pytest

from hpc_ppo.rollout.allreduce import MULTICAST_OFF, plan_allreduce


def test_default_never_lets_vllm_pick_multicast():
    plan = plan_allreduce("custom", 2, {}, ["n1", "n1"])
    assert plan.env["VLLM_FLASHINFER_ALLREDUCE_BACKEND"] == "trtllm"  # not auto -> mnnvl
    assert plan.env["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    assert plan.compilation_config == {"pass_config": {"fuse_allreduce_rms": False}}
    assert "fusion off" in plan.description and "no NVLink multicast" in plan.description


def test_fused_uses_trtllm_and_says_so():
    plan = plan_allreduce("fused", 2, {}, ["n1", "n1"])
    assert plan.compilation_config == {"pass_config": {"fuse_allreduce_rms": True}}
    assert plan.env["VLLM_FLASHINFER_ALLREDUCE_BACKEND"] == "trtllm"
    assert "fusion on (FlashInfer trtllm" in plan.description


def test_an_environment_asking_for_mnnvl_is_overridden_and_named():
    plan = plan_allreduce("custom", 2, {"VLLM_FLASHINFER_ALLREDUCE_BACKEND": "mnnvl"}, ["a", "a"])
    assert plan.env["VLLM_FLASHINFER_ALLREDUCE_BACKEND"] == "trtllm"
    assert "overrides VLLM_FLASHINFER_ALLREDUCE_BACKEND=mnnvl" in plan.description


def test_fused_across_nodes_is_refused_before_vllm_starts():
    with pytest.raises(ValueError, match=r"rollout.allreduce=fused: .* spans \['n1', 'n2'\]"):
        plan_allreduce("fused", 2, {}, ["n1", "n2"])


@pytest.mark.parametrize("var", sorted(MULTICAST_OFF))
def test_vllm_choice_refused_where_multicast_is_off(var):
    with pytest.raises(
        ValueError, match=f"rollout.allreduce=vllm .*{var}=.*use rollout.allreduce=custom"
    ):
        plan_allreduce("vllm", 2, {var: MULTICAST_OFF[var]}, ["a", "a"])
    assert plan_allreduce("vllm", 2, {}, ["a", "a"]).env == {}


def test_tp1_changes_nothing():
    plan = plan_allreduce("fused", 1, {}, ["a"])
    assert plan.env == {} and plan.compilation_config is None


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="must be one of custom, fused, vllm"):
        plan_allreduce("nvls", 2, {})
