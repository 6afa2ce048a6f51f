"""The scoring passes before an update: old log-probs, reference log-probs and values.

    hpc-ppo run configs/tiny-cpu.yaml algo.kl_coef=0.01    # all three, every step

Old log-probs are recomputed by the FSDP policy rather than taken from the rollout engine
(their gap to the engine's is logged as actor/logprob_gap), so the ratio in the policy loss
compares two passes of the same kernels. No gradients; micro-batches as planned in batch.py.
"""

from __future__ import annotations

from hpc_ppo.batch import MicroPlan, RolloutBatch, critic_forward, forward_all, policy_forward
from hpc_ppo.model import Models
from hpc_ppo.rollout.cycle import Timer


def old_ref_logprobs_and_values(
    models: Models, batch: RolloutBatch, plan: MicroPlan, temperature: float, timer: Timer
) -> None:
    """Set `old_logprobs`, and `ref_logprobs` / `values` where a reference / critic exists."""
    with timer("old_logprob"):
        batch["old_logprobs"] = forward_all(
            policy_forward, models.policy, batch, plan, temperature=temperature
        )
    if models.ref is not None:
        with timer("ref"):
            batch["ref_logprobs"] = forward_all(
                policy_forward, models.ref, batch, plan, temperature=temperature
            )
    if models.critic is not None:
        with timer("values"):
            batch["values"] = forward_all(critic_forward, models.critic, batch, plan)
