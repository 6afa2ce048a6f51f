"""GPU memory per rank and checkpoint size of a config, estimated before anything starts.

    hpc-ppo doctor configs/qwen2-7b.yaml model.path=/models/Qwen2-7B-Instruct   # prints both

An estimate from the model's config.json (parameters counted on the meta device: nothing is
loaded) and the config's keys, not a measurement. What it counts on one GPU, and why:

- Training state, resident from the first step to the last, sharded by FSDP2 over every rank:
  parameters, gradients (they live on until the next update's zero_grad) and AdamW's two
  moments, all in model.dtype: 16 bytes a parameter for float32 (master weights; compute is
  bf16), 8 for bfloat16. The policy always, the critic for PPO, and the reference model
  (algo.kl_coef > 0) at 2 bytes a parameter (bf16: it only runs forward).
- While vLLM generates: its share, rollout.gpu_memory_utilization x the GPU's memory. Inside it
  the bf16 weights split over rollout.tp, VLLM_RUNTIME, and the KV cache in what is left.
  (rollout.engine=hf on a GPU instead: its unsharded copy of the policy, in model.dtype, at all
  times; what `generate` adds is not counted.)
- While FSDP updates the actor (vLLM asleep when rollout.free_cache_engine): one micro-batch's
  activations (every row at its length cap: data.max_prompt_tokens + rollout.max_new_tokens),
  two decoder layers and the root module (embeddings, head) gathered in bf16, and the LM
  head's output over the response positions: kept in bf16 for the backward and its bf16
  gradient (hpc_ppo.algo.logits computes in float32 chunks of LOGITS_WORKING bytes); with
  trainer.defer_grad_reduce, the policy's whole gradient, unsharded until the mini-batch's
  last micro-batch.
- OVERHEAD: CUDA context, NCCL buffers, allocator slack, what vLLM keeps outside its share.

Calibrated on the one full-depth measurement (docs/PERFORMANCE.md, "GPU (2 x H200)": Qwen2.5-7B
shape, PPO with critic and reference, bfloat16, 2 ranks, TP=2, utilization 0.35, 143,771 MiB
GPUs), the golden numbers of tests/test_memory_plan.py:

- 120.4 GiB of the device in use right after generation; counted here without OVERHEAD: 110.9
  (state 61.8 + vLLM's share 49.1). OVERHEAD = 10 GiB (9.5 GiB there; 10.9 GiB at step 0,
  before gradients and AdamW states existed).
- vLLM reported 7.16 GiB of weights and a 40.58 GiB KV cache in its 49.1 GiB share:
  VLLM_RUNTIME = 1.5 GiB for the rest (1.4 GiB measured).
- The actor update ran out of memory with micro-batches of 16 rows (8,208 response positions)
  and fitted with 4 rows, when log-probs and entropies kept float32 copies of the logits for
  the backward: 14 such copies was the smallest count that predicted that failure. Since
  hpc_ppo.algo.logits keeps none, the logits term is its two bf16 tensors plus the chunks'
  working set, which predicts that 16 rows now fit: not yet measured on a GPU, so the update
  estimate is uncalibrated and leans towards "fits": a warning from it is a real risk, its
  silence no proof.
- The run's checkpoint (policy + critic + AdamW states): 83 GB on disk; counted 82.1 GiB.

Simplifications: every GPU is like the one this process sees; activation sizes follow the
decoder layer's matmul inputs (Qwen2/Llama layout), not a profile; padding is the worst case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hpc_ppo.config import BUILTIN_TINY_MODEL, Config, ModelConfig

GiB = 1024**3
OVERHEAD = 10 * GiB
VLLM_RUNTIME = int(1.5 * GiB)
LOGITS_WORKING = 4 * (1 << 26) * 4  # 4 float32 [chunk, vocab] tensors (algo/logits.py)
STATE_BYTES = {"float32": 16, "bfloat16": 8}  # parameter + gradient + 2 AdamW moments
PARAM_BYTES = {"float32": 4, "bfloat16": 2}
BF16 = 2


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the policy (a causal LM) and of the critic built from the same directory."""

    params: int  # causal LM: policy, reference, vLLM's copy
    critic_params: int  # token-classification head on the same backbone
    layer_params: int  # one decoder layer
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int


def model_shape(mc: ModelConfig) -> ModelShape:
    """Count the parameters of model.path's architecture on the meta device (no weights read);
    the built-in model from its config in code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    if mc.path == BUILTIN_TINY_MODEL:
        from hpc_ppo.model import tiny_config, tiny_tokenizer

        conf = tiny_config(mc, tiny_tokenizer())
    else:
        conf = AutoConfig.from_pretrained(mc.path, local_files_only=True)  # never the Hub
    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(conf)
        conf.num_labels = 1
        try:
            critic_params = _count(AutoModelForTokenClassification.from_config(conf))
        except ValueError:  # no token-classification class: backbone + a 1-output head
            head = policy.get_output_embeddings()
            tied = getattr(conf, "tie_word_embeddings", False)
            critic_params = _count(policy) - (0 if tied else _count(head)) + conf.hidden_size + 1
    layers = getattr(policy, policy.base_model_prefix).layers
    heads = conf.num_attention_heads
    return ModelShape(
        params=_count(policy),
        critic_params=critic_params,
        layer_params=_count(layers[0]),
        layers=len(layers),
        hidden=conf.hidden_size,
        intermediate=conf.intermediate_size,
        vocab=conf.vocab_size,
        kv_heads=getattr(conf, "num_key_value_heads", None) or heads,
        head_dim=getattr(conf, "head_dim", None) or conf.hidden_size // heads,
    )


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Workload:
    """What the estimate reads from a config, for a job of `world` ranks."""

    world: int
    dtype: str  # model.dtype
    critic: bool  # algo.name == ppo
    reference: bool  # algo.kl_coef > 0
    vllm: bool  # rollout.engine == vllm
    utilization: float
    kv_cache_bytes: int | None
    tp: int
    sleeps: bool  # rollout.free_cache_engine
    checkpointing: bool  # model.gradient_checkpointing
    defer_grads: bool  # trainer.defer_grad_reduce
    rows: int  # rollouts in one micro-batch of one rank, at most
    prompt_tokens: int  # data.max_prompt_tokens
    response_tokens: int  # rollout.max_new_tokens

    @property
    def row_tokens(self) -> int:
        return self.prompt_tokens + self.response_tokens


def workload(cfg: Config, world: int, rows: int | None = None) -> Workload:
    """`cfg`'s job on `world` ranks; `rows` replaces the micro-batch rows the config gives."""
    t, r, a = cfg.trainer, cfg.rollout, cfg.algo
    row_tokens = cfg.data.max_prompt_tokens + r.max_new_tokens
    if rows is None:
        per_rank = max(1, a.mini_batch_size * r.n // max(world, 1))  # one mini-batch's share
        rows = min(t.micro_batch_size, per_rank)
        if t.max_tokens_per_micro_batch is not None:  # a longer row still gets its own
            rows = min(rows, max(1, t.max_tokens_per_micro_batch // row_tokens))
    return Workload(
        world=world,
        dtype=cfg.model.dtype,
        critic=a.name == "ppo",
        reference=a.kl_coef > 0,
        vllm=r.engine == "vllm",
        utilization=r.gpu_memory_utilization,
        kv_cache_bytes=r.kv_cache_memory_bytes,
        tp=r.tp,
        sleeps=r.free_cache_engine,
        checkpointing=cfg.model.gradient_checkpointing,
        defer_grads=t.defer_grad_reduce,
        rows=rows,
        prompt_tokens=cfg.data.max_prompt_tokens,
        response_tokens=r.max_new_tokens,
    )


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on one GPU of `total`, by what holds them (see the module docstring)."""

    total: int
    policy: int
    critic: int
    reference: int
    engine: int  # the rollout engine while it generates: vLLM's share, or the HF engine's copy
    vllm_weights: int
    kv_cache: int  # what vLLM's share leaves for the KV cache (or rollout.kv_cache_memory_bytes)
    kv_per_token: int
    activations: int
    gathered: int
    logits: int  # the LM head's output and its gradient (bf16), and the chunks' working set
    unsharded_grads: int  # trainer.defer_grad_reduce: the whole policy's gradients, unsharded
    engine_in_update: int  # what the engine keeps while FSDP trains (0: vLLM asleep)
    overhead: int = OVERHEAD

    @property
    def state(self) -> int:
        return self.policy + self.critic + self.reference

    @property
    def rollout_peak(self) -> int:
        """In use while vLLM generates: the training state stays resident."""
        return self.state + self.engine + self.overhead

    @property
    def update_peak(self) -> int:
        return (
            self.state
            + self.overhead
            + self.activations
            + self.gathered
            + self.logits
            + self.unsharded_grads
            + self.engine_in_update
        )


def plan_memory(shape: ModelShape, w: Workload, total: int) -> MemoryPlan:
    """The estimate for one GPU of `total` bytes (see the module docstring for each term)."""
    state = STATE_BYTES[w.dtype]
    share = int(w.utilization * total) if w.vllm else 0
    engine = share if w.vllm else shape.params * PARAM_BYTES[w.dtype]
    weights = shape.params * BF16 // w.tp if w.vllm else 0
    # vLLM splits KV heads over TP ranks and replicates them when there are fewer than ranks.
    kv_per_token = 2 * shape.layers * max(1, shape.kv_heads // w.tp) * shape.head_dim * BF16
    kv_cache = w.kv_cache_bytes if w.kv_cache_bytes is not None else share - weights - VLLM_RUNTIME
    tokens = w.rows * w.row_tokens
    return MemoryPlan(
        total=total,
        policy=shape.params * state // w.world,
        critic=shape.critic_params * state // w.world if w.critic else 0,
        reference=shape.params * BF16 // w.world if w.reference else 0,
        engine=engine,
        vllm_weights=weights,
        kv_cache=max(kv_cache, 0) if w.vllm else 0,
        kv_per_token=kv_per_token,
        activations=tokens * _activation_bytes_per_token(shape, w.checkpointing),
        gathered=(shape.params - shape.layers * shape.layer_params + 2 * shape.layer_params) * BF16,
        logits=2 * BF16 * w.rows * (w.response_tokens + 1) * shape.vocab + LOGITS_WORKING,
        # float32 for float32 parameters (FSDP2 accumulates in the reduce dtype), else bf16
        unsharded_grads=shape.params * PARAM_BYTES[w.dtype] if w.defer_grads else 0,
        engine_in_update=0 if w.vllm and w.sleeps else engine,
    )


def _activation_bytes_per_token(shape: ModelShape, checkpointing: bool) -> int:
    """bf16 activations a decoder layer keeps for backward, per token: the inputs of its norms
    and matmuls, attention's q/k/v/out and the gated MLP's three intermediate-wide tensors
    (~7 hidden + 3 KV + 4 intermediate widths). With checkpointing only each layer's input
    stays, plus one layer recomputed at a time."""
    kv = shape.kv_heads * shape.head_dim
    layer = (7 * shape.hidden + 3 * kv + 4 * shape.intermediate) * BF16
    if checkpointing:
        return shape.layers * shape.hidden * BF16 + layer
    return shape.layers * layer


def sequence_kv_bytes(plan: MemoryPlan, w: Workload) -> int:
    """KV cache one full-length sequence needs (vLLM refuses to start without room for it)."""
    return plan.kv_per_token * w.row_tokens


def utilization_to_fit(plan: MemoryPlan) -> float:
    """The largest rollout.gpu_memory_utilization (two decimals) whose share fits beside the
    training state and the overhead; may be <= 0."""
    room = plan.total - plan.state - plan.overhead
    return math.floor(room / plan.total * 100) / 100


def utilization_needed(plan: MemoryPlan, w: Workload) -> float:
    """The smallest utilization that holds vLLM's weights, its runtime and one sequence's KV."""
    need = plan.vllm_weights + VLLM_RUNTIME + sequence_kv_bytes(plan, w)
    return math.ceil(need / plan.total * 100) / 100


def ranks_to_fit(shape: ModelShape, w: Workload, total: int, step: int, limit: int = 4096):
    """The smallest world (a multiple of `step`: a node's ranks) at which the rollout phase
    fits, or None below `limit`."""
    for world in range(step, limit + 1, step):
        if plan_memory(shape, replace(w, world=world), total).rollout_peak <= total:
            return world
    return None


def rows_to_fit(shape: ModelShape, w: Workload, total: int) -> int:
    """The most micro-batch rows whose update fits (0: not even one)."""
    rows = 0
    while (
        rows < w.rows and plan_memory(shape, replace(w, rows=rows + 1), total).update_peak <= total
    ):
        rows += 1
    return rows


def checkpoint_bytes(shape: ModelShape, w: Workload) -> int:
    """One checkpoint on disk: policy (and critic) parameters and both AdamW moments, in
    model.dtype (the reference model is not saved: it is the initial policy)."""
    params = shape.params + (shape.critic_params if w.critic else 0)
    return params * PARAM_BYTES[w.dtype] * 3
