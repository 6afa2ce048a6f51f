"""The config tree's shape: one dataclass per section, each field with its default, its own
check (bounds, choices) and a one-line doc.

    hpc-ppo validate configs/tiny-cpu.yaml      # loads, checks and prints this tree
    python -m hpc_ppo.config.reference          # the README table made from the docs below

Plain data: nothing from hpc_ppo is imported here, so any module can import the tree without
pulling in the loader or the rules (load.py reads YAML into it, validate.py checks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BUILTIN_TINY_MODEL = "builtin:tiny-qwen2"
# Keys a resumed run may change: how it is launched, not what it computes.
RESUMABLE_KEYS = (
    "trainer.nprocs",
    "trainer.threads_per_rank",
    "trainer.total_steps",
    "trainer.profile_steps",  # profiling only watches: a resumed run may profile other steps
    "tracking.uri",
)


def _spec(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    factory: Any = dataclasses.MISSING,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata (bounds, choices) and a one-line doc."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TinyModelConfig:
    """Shape of the built-in Qwen2-architecture model created from a config (no download)."""

    hidden_size: int = _spec(64, ge=8, doc="hidden width")
    num_hidden_layers: int = _spec(2, ge=1, doc="transformer layers")
    num_attention_heads: int = _spec(4, ge=1, doc="attention heads")
    num_key_value_heads: int = _spec(2, ge=1, doc="KV heads (GQA)")
    intermediate_size: int = _spec(128, ge=8, doc="MLP width")


@dataclass
class ModelConfig:
    path: str = _spec(BUILTIN_TINY_MODEL, doc="HF model directory, or builtin:tiny-qwen2")
    critic_path: str | None = _spec(None, doc="critic init directory (default: model.path)")
    tiny: TinyModelConfig = _spec(factory=TinyModelConfig, doc="shape of builtin:tiny-qwen2")
    dtype: str = _spec("float32", choices=("float32", "bfloat16"), doc="parameter dtype")
    attn_implementation: str = _spec(
        "auto",
        choices=("auto", "sdpa", "eager", "flash_attention_2", "varlen"),
        doc="auto: flash_attention_2 on a GPU with flash-attn, else varlen (packed micro-batches"
        " through torch's varlen kernel on a GPU, sdpa row by row on the CPU; the rest sdpa)",
    )
    gradient_checkpointing: bool = _spec(False, doc="recompute activations in backward")


@dataclass
class SyntheticDataConfig:
    task: str = _spec("letters", choices=("letters",), doc="synthetic prompt task")
    num_prompts: int = _spec(4096, ge=1, doc="prompts generated")
    min_len: int = _spec(3, ge=1, doc="shortest letter string")
    max_len: int = _spec(6, ge=1, doc="longest letter string")


@dataclass
class DataConfig:
    path: str | list[str] | None = _spec(
        None, doc=".jsonl or .parquet prompt file, or a list of them; null = synthetic task"
    )
    val_path: str | list[str] | None = _spec(
        None, doc="held-out prompt file(s), same layout as data.path; see trainer.val_every"
    )
    prompt_key: str = _spec(
        "prompt",
        doc="field holding the prompt: a string, or chat messages (rendered with the "
        "chat template)",
    )
    answer_key: str | None = _spec(
        "answer",
        doc="field holding the ground truth, dotted if nested (reward_model."
        "ground_truth); null: none",
    )
    max_prompt_tokens: int = _spec(256, ge=1, doc="longer prompts are cut from the left")
    chat_template: bool = _spec(False, doc="wrap prompts with the tokenizer's chat template")
    shuffle: bool = _spec(True, doc="reshuffle prompts every epoch")
    synthetic: SyntheticDataConfig = _spec(factory=SyntheticDataConfig)


@dataclass
class RewardConfig:
    fn: str = _spec("letters", doc="builtin name or 'pkg.module:function'")
    by_source: list[str] = _spec(
        factory=list,
        doc="source=reward items (reward as in reward.fn), e.g. openai/gsm8k=gsm8k; other "
        "sources use reward.fn",
    )
    pass_threshold: float = _spec(
        1.0, doc="a validation sample passes (val/pass_at_<k>) when its reward is >= this"
    )


@dataclass
class RolloutConfig:
    engine: str = _spec("hf", choices=("hf", "vllm"), doc="hf: transformers generate (CPU)")
    n: int = _spec(4, ge=1, le=1024, doc="samples per prompt")
    temperature: float = _spec(1.0, gt=0.0, le=10.0, doc="sampling temperature")
    top_p: float = _spec(1.0, gt=0.0, le=1.0, doc="nucleus sampling")
    val_n: int = _spec(1, ge=1, le=1024, doc="validation: samples per prompt (>1: val/pass_at_<k>)")
    val_temperature: float = _spec(
        0.0, ge=0.0, le=10.0, doc="validation: sampling temperature; 0 = greedy"
    )
    max_new_tokens: int = _spec(16, ge=1, doc="response length cap")
    forced_lengths: tuple[int, int] | None = _spec(
        None,
        doc="benchmarks: every response of a prompt gets a length drawn uniformly from"
        " [lo, hi] (seeded by step and prompt; EOS ignored); null: the model decides",
    )
    chunks: int = _spec(
        1, ge=1, doc="generate in this many calls; stop requests are checked between"
    )
    tp: int = _spec(1, ge=1, doc="tensor-parallel size of the vLLM engine")
    gpu_memory_utilization: float = _spec(
        0.5, gt=0.0, lt=1.0, doc="vLLM: share of GPU memory for weights + KV cache"
    )
    enforce_eager: bool = _spec(False, doc="vLLM: disable CUDA graphs")
    compile: bool = _spec(
        True,
        doc="vLLM: torch.compile the model; false: CUDA graphs of decode steps without"
        " compiling (shorter cold start; see rollout/compile.py)",
    )
    cudagraph_max_batch: int | None = _spec(
        None,
        ge=1,
        doc="vLLM: largest decode batch captured as a CUDA graph; null: the sequences one step"
        " sends the engine (at most 512, vLLM's default)",
    )
    allreduce: str = _spec(
        "custom",
        choices=("custom", "fused", "vllm"),
        doc="vLLM TP>1 all-reduce: custom = CUDA IPC, no fusion; fused = + all-reduce/RMSNorm "
        "fusion (trtllm); vllm = vLLM's choice (may use NVLink multicast)",
    )
    free_cache_engine: bool = _spec(True, doc="vLLM: sleep during training")
    kv_cache_memory_bytes: int | None = _spec(
        None, ge=1, doc="vLLM: KV cache size in bytes (null: what gpu_memory_utilization leaves)"
    )
    max_num_seqs: int | None = _spec(None, ge=1, doc="vLLM: sequences per step (null: its default)")
    max_num_batched_tokens: int | None = _spec(
        None, ge=1, doc="vLLM: tokens per step (null: its default)"
    )
    enable_prefix_caching: bool | None = _spec(
        None, doc="vLLM: reuse shared-prefix KV (null: default)"
    )
    enable_chunked_prefill: bool | None = _spec(None, doc="vLLM: chunked prefill (null: default)")
    cache_dir: str | None = _spec(
        None, doc="vLLM/FlashInfer/Triton/inductor caches; null: <trainer.output_dir>/.cache"
    )


@dataclass
class OptimConfig:
    lr: float = _spec(1e-6, gt=0.0, lt=1.0, doc="AdamW learning rate")
    weight_decay: float = _spec(0.0, ge=0.0, doc="AdamW weight decay")
    betas: tuple[float, float] = _spec((0.9, 0.999), doc="AdamW betas")
    lr_scheduler: str = _spec(
        "constant",
        choices=("constant", "cosine", "linear"),
        doc="LR after the warmup: constant, or decayed to lr * min_lr_ratio at trainer.total_steps",
    )
    warmup_steps: int = _spec(0, ge=0, doc="linear LR warmup steps (or warmup_ratio)")
    warmup_ratio: float = _spec(
        0.0, ge=0.0, lt=1.0, doc="warmup as a share of trainer.total_steps (or warmup_steps)"
    )
    min_lr_ratio: float = _spec(0.0, ge=0.0, le=1.0, doc="cosine/linear: final LR / lr")
    grad_clip: float = _spec(1.0, gt=0.0, doc="max gradient norm")


@dataclass
class AlgoConfig:
    name: str = _spec("ppo", choices=("ppo", "grpo"), doc="ppo uses a critic + GAE")
    gamma: float = _spec(1.0, ge=0.0, le=1.0, doc="GAE discount")
    lam: float = _spec(0.95, ge=0.0, le=1.0, doc="GAE lambda")
    clip_ratio: float = _spec(0.2, gt=0.0, lt=1.0, doc="PPO ratio clip")
    value_clip: float | None = _spec(0.5, gt=0.0, doc="null disables value clipping")
    vf_coef: float = _spec(1.0, ge=0.0, doc="scales the critic loss")
    kl_coef: float = _spec(0.0, ge=0.0, doc="0 disables the reference model")
    kl_mode: str = _spec("reward", choices=("reward", "loss"), doc="where the KL enters")
    kl_estimator: str = _spec("k1", choices=("k1", "k2", "k3"))
    entropy_coef: float = _spec(0.0, ge=0.0, doc="entropy bonus")
    tis_cap: float | None = _spec(
        None, gt=0.0, doc="truncated importance weights min(pi_fsdp / pi_engine, cap); null: off"
    )
    loss_agg: str = _spec("token-mean", choices=("token-mean", "seq-mean"))
    whiten_advantages: bool = _spec(True, doc="normalise GAE advantages per batch")
    ppo_epochs: int = _spec(1, ge=1, le=100, doc="passes over each step's samples")
    mini_batch_size: int = _spec(8, ge=1, doc="prompts per optimizer step (global)")


@dataclass
class TrainerConfig:
    total_steps: int = _spec(50, ge=1, doc="training steps")
    batch_size: int = _spec(32, ge=1, doc="prompts per step, all ranks together")
    nprocs: int = _spec(1, ge=1, le=64, doc="local ranks for `hpc-ppo run`")
    seed: int = _spec(0, ge=0, doc="seeds data order, model init and sampling")
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    output_dir: str = _spec("runs", doc="run folders are created under it")
    run_name: str | None = _spec(
        None, doc="one folder name under output_dir; default: <config stem>-<timestamp>"
    )
    micro_batch_size: int = _spec(64, ge=1, doc="rollouts per forward/backward pass per rank")
    max_tokens_per_micro_batch: int | None = _spec(
        None,
        ge=1,
        doc="dynamic batching: fill micro-batches up to this many tokens (real tokens when"
        " padding_free, else padded)",
    )
    padding_free: bool | None = _spec(
        None,
        doc="run micro-batches as packed sequences, no pad token computed (model."
        "attn_implementation=auto: varlen kernels); null: on a GPU under auto, varlen or"
        " flash_attention_2; off on the CPU and under sdpa or eager (slower there)",
    )
    defer_grad_reduce: bool = _spec(
        True,
        doc="reduce-scatter gradients once per mini-batch, after its last micro-batch (FSDP2),"
        " not after each; meanwhile every rank holds the full gradients in float32: set false"
        " where memory is tight",
    )
    balance_tokens: bool = _spec(
        False, doc="move whole prompt groups between ranks to even out tokens"
    )
    val_every: int = _spec(
        0, ge=0, doc="validate on data.val_path every N steps and after the last (0: never)"
    )
    val_before_train: bool = _spec(False, doc="validate at step 0, before any training")
    val_sample_prompts: int = _spec(
        16, ge=0, doc="prompts whose responses each validation writes to val/step_<N>.jsonl"
    )
    profile_steps: list[int] = _spec(
        factory=list,
        doc="steps run under torch.profiler: operator tables and a Chrome trace in"
        " <run dir>/profile (e.g. [2]; a profiled step runs slower)",
    )
    save_every: int = _spec(0, ge=0, doc="checkpoint every N steps (0: only at the end / on stop)")
    keep_checkpoints: int = _spec(2, ge=2, doc="complete checkpoints kept")
    async_save: bool = _spec(False, doc="write periodic checkpoints in a background thread")
    async_save_pinned: bool = _spec(
        True,
        doc="async saves on GPUs: the CPU copy stays in pinned memory between saves (blocks"
        " 0.26 s instead of 9.1 s per 12 GiB from the second save on; holds a rank's share of"
        " the checkpoint in host memory for the whole run)",
    )
    threads_per_rank: int | None = _spec(
        None, ge=1, doc="torch CPU threads per rank (default: cores / ranks)"
    )


@dataclass
class TrackingConfig:
    uri: str | None = _spec(
        None,
        doc="MLflow tracking URI (default: sqlite in the run dir); sqlite:////<shared>/mlflow.db:"
        " one store for many runs",
    )
    experiment: str = _spec("hpc-ppo", doc="MLflow experiment name")
    tensorboard: bool = _spec(
        False, doc="also write TensorBoard event files to <run dir>/tensorboard (needs tensorboard)"
    )


@dataclass
class SlurmConfig:
    """How `hpc-ppo submit` / `render-sbatch` ask Slurm for resources (one task per GPU)."""

    nodes: int = _spec(1, ge=1, doc="nodes")
    gpus_per_node: int = _spec(0, ge=0, doc="GPUs per node; 0 for a CPU job")
    tasks_per_node: int | None = _spec(None, ge=1, doc="default: gpus_per_node (1 for CPU jobs)")
    gpu_binding: str = _spec("node", choices=("node", "task"), doc="task: --gpus-per-task=1")
    cpus_per_task: int = _spec(1, ge=1, doc="CPU cores per task")
    mem: str | None = _spec(None, doc="per node, e.g. 200G; null: cluster default")
    time: str = _spec("01:00:00", doc="wall-time limit, [D-]HH:MM:SS or minutes")
    partition: str | None = _spec(None, doc="null: the cluster default")
    account: str | None = _spec(None, doc="--account")
    qos: str | None = _spec(None, doc="--qos")
    constraint: str | None = _spec(None, doc="--constraint, e.g. h100")
    exclusive: bool = _spec(False, doc="--exclusive nodes")
    job_name: str | None = _spec(None, doc="default: the run name")
    signal_lead_s: int = _spec(180, ge=30, doc="USR2 this many seconds before the time limit")
    requeue: bool = _spec(True, doc="requeue on preemption / time limit")
    setup: list[str] = _spec(factory=list, doc="shell lines run before srun (module load ...)")
    extra_sbatch: list[str] = _spec(factory=list, doc="extra #SBATCH options, e.g. --reservation=x")

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


@dataclass
class Config:
    model: ModelConfig = _spec(factory=ModelConfig)
    data: DataConfig = _spec(factory=DataConfig)
    reward: RewardConfig = _spec(factory=RewardConfig)
    rollout: RolloutConfig = _spec(factory=RolloutConfig)
    actor: OptimConfig = _spec(factory=lambda: OptimConfig(lr=1e-6))
    critic: OptimConfig = _spec(factory=lambda: OptimConfig(lr=1e-5))
    algo: AlgoConfig = _spec(factory=AlgoConfig)
    trainer: TrainerConfig = _spec(factory=TrainerConfig)
    tracking: TrackingConfig = _spec(factory=TrackingConfig)
    slurm: SlurmConfig = _spec(factory=SlurmConfig)
