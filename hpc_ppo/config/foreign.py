"""verl and TRL names for hpc-ppo keys: what an unknown key's "did you mean" offers first.

    hpc-ppo validate configs/tiny-cpu.yaml data.max_response_length=512
    # data.max_response_length: unknown key; did you mean rollout.max_new_tokens=512? (verl's name)

A spelling match (difflib) is wrong for these: verl's data.max_response_length is closest to
data.max_prompt_tokens, which is the other end of the sequence. Names are looked up by their
full dotted path first (verl's nested layout), then by the last part (TRL's flat GRPOConfig
names, wherever they were put). Plain data, imported by load.py only.
"""

from __future__ import annotations

# Foreign name -> the hpc-ppo key that does the same.
KEYS: dict[str, str] = {
    # verl (ppo_trainer.yaml)
    "data.train_files": "data.path",
    "data.val_files": "data.val_path",
    "data.train_batch_size": "trainer.batch_size",
    "data.max_prompt_length": "data.max_prompt_tokens",
    "data.max_response_length": "rollout.max_new_tokens",
    "data.reward_fn_key": "reward.by_source",
    "trainer.test_freq": "trainer.val_every",
    "trainer.total_training_steps": "trainer.total_steps",
    "trainer.save_freq": "trainer.save_every",
    "trainer.default_local_dir": "trainer.output_dir",
    "trainer.experiment_name": "trainer.run_name",
    "trainer.project_name": "tracking.experiment",
    "trainer.n_gpus_per_node": "slurm.gpus_per_node",
    "trainer.nnodes": "slurm.nodes",
    "trainer.max_actor_ckpt_to_keep": "trainer.keep_checkpoints",
    "actor_rollout_ref.model.path": "model.path",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "model.gradient_checkpointing",
    "actor_rollout_ref.actor.optim.lr": "actor.lr",
    "actor_rollout_ref.actor.optim.weight_decay": "actor.weight_decay",
    "actor_rollout_ref.actor.optim.lr_warmup_steps": "actor.warmup_steps",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": "actor.warmup_ratio",
    "actor_rollout_ref.actor.optim.warmup_style": "actor.lr_scheduler",
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "actor.lr_scheduler",
    "actor_rollout_ref.actor.optim.min_lr_ratio": "actor.min_lr_ratio",
    "actor_rollout_ref.actor.grad_clip": "actor.grad_clip",
    "actor_rollout_ref.actor.ppo_mini_batch_size": "algo.mini_batch_size",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": "trainer.max_tokens_per_micro_batch",
    "actor_rollout_ref.actor.ppo_epochs": "algo.ppo_epochs",
    "actor_rollout_ref.actor.clip_ratio": "algo.clip_ratio",
    "actor_rollout_ref.actor.entropy_coeff": "algo.entropy_coef",
    "actor_rollout_ref.actor.kl_loss_coef": "algo.kl_coef",
    "actor_rollout_ref.actor.kl_loss_type": "algo.kl_estimator",
    "actor_rollout_ref.actor.loss_agg_mode": "algo.loss_agg",
    "actor_rollout_ref.rollout.n": "rollout.n",
    "actor_rollout_ref.rollout.temperature": "rollout.temperature",
    "actor_rollout_ref.rollout.top_p": "rollout.top_p",
    "actor_rollout_ref.rollout.response_length": "rollout.max_new_tokens",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": "rollout.tp",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "actor_rollout_ref.rollout.enforce_eager": "rollout.enforce_eager",
    "actor_rollout_ref.rollout.free_cache_engine": "rollout.free_cache_engine",
    "actor_rollout_ref.rollout.max_num_seqs": "rollout.max_num_seqs",
    "actor_rollout_ref.rollout.max_num_batched_tokens": "rollout.max_num_batched_tokens",
    "actor_rollout_ref.rollout.enable_chunked_prefill": "rollout.enable_chunked_prefill",
    "actor_rollout_ref.rollout.val_kwargs.n": "rollout.val_n",
    "actor_rollout_ref.rollout.val_kwargs.temperature": "rollout.val_temperature",
    "critic.optim.lr": "critic.lr",
    "critic.optim.weight_decay": "critic.weight_decay",
    "critic.optim.lr_warmup_steps": "critic.warmup_steps",
    "critic.optim.lr_warmup_steps_ratio": "critic.warmup_ratio",
    "critic.optim.warmup_style": "critic.lr_scheduler",
    "critic.optim.min_lr_ratio": "critic.min_lr_ratio",
    "critic.model.path": "model.critic_path",
    "critic.cliprange_value": "algo.value_clip",
    "critic.grad_clip": "critic.grad_clip",
    "algorithm.adv_estimator": "algo.name",
    "algorithm.gamma": "algo.gamma",
    "algorithm.lam": "algo.lam",
    "algorithm.kl_ctrl.kl_coef": "algo.kl_coef",
    "algorithm.kl_penalty": "algo.kl_estimator",
    "custom_reward_function.path": "reward.fn",
    "custom_reward_function.name": "reward.fn",
    # TRL (GRPOConfig / PPOConfig / TrainingArguments), by their flat names
    "learning_rate": "actor.lr",
    "lr_scheduler_type": "actor.lr_scheduler",
    "warmup_ratio": "actor.warmup_ratio",
    "warmup_steps": "actor.warmup_steps",
    "max_grad_norm": "actor.grad_clip",
    "num_generations": "rollout.n",
    "max_completion_length": "rollout.max_new_tokens",
    "max_prompt_length": "data.max_prompt_tokens",
    "per_device_train_batch_size": "trainer.batch_size",
    "max_steps": "trainer.total_steps",
    "eval_steps": "trainer.val_every",
    "save_steps": "trainer.save_every",
    "save_total_limit": "trainer.keep_checkpoints",
    "num_iterations": "algo.ppo_epochs",
    "epsilon": "algo.clip_ratio",
    "beta": "algo.kl_coef",
    "temperature": "rollout.temperature",
    "vllm_gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "vllm_tensor_parallel_size": "rollout.tp",
    "gradient_checkpointing": "model.gradient_checkpointing",
}

# Foreign names with no one-to-one key: how to get the same effect.
ADVICE: dict[str, str] = {
    "trainer.total_epochs": "hpc-ppo counts steps: set trainer.total_steps to "
    "epochs x prompts / trainer.batch_size",
    "num_train_epochs": "hpc-ppo counts steps: set trainer.total_steps to "
    "epochs x prompts / trainer.batch_size",
    "trainer.logger": "hpc-ppo always writes metrics.jsonl and MLflow (tracking.uri)",
    "report_to": "hpc-ppo always writes metrics.jsonl and MLflow (tracking.uri)",
    "trainer.val_only": "run the validation alone with trainer.val_before_train=true "
    "trainer.total_steps=1",
    "actor_rollout_ref.actor.use_kl_loss": "set algo.kl_mode=loss (and algo.kl_coef)",
    "eval_strategy": "set trainer.val_every=N (steps) and data.val_path",
    "bf16": "set model.dtype=bfloat16",
}


def foreign_hint(dotted: str, value: object) -> str | None:
    """The fix for a verl or TRL name (`dotted`, its full path), or None if it is not one.
    `value` is shown in the suggested key=value when it is a plain value."""
    name = dotted if dotted in KEYS or dotted in ADVICE else dotted.rpartition(".")[2]
    if name in ADVICE:
        return f"{ADVICE[name]} ({_whose(name)} {name})"
    if name in KEYS:
        shown = "" if isinstance(value, (dict, list)) or value is None else f"={value}"
        return f"did you mean {KEYS[name]}{shown}? ({_whose(name)} {name})"
    return None


def _whose(name: str) -> str:
    return "TRL's" if "." not in name else "verl's"


def leaves(value: object, prefix: str) -> list[tuple[str, object]]:
    """(dotted path, value) of every leaf under a nested mapping."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    out: list[tuple[str, object]] = []
    for k, v in value.items():
        out += leaves(v, f"{prefix}.{k}")
    return out
