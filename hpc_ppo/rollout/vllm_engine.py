"""Rollout engine on vLLM 0.26, inside the training rank's own process (GPU path).

    hpc-ppo run configs/gpu-smoke-0.5b.yaml          # 1 GPU: FSDP2 + in-rank vLLM
    python -m pytest tests/gpu -q                     # its GPU tests

Every rank builds one `vllm.LLM(distributed_executor_backend="external_launcher")` after
torch.distributed is up; vLLM reuses that process group and makes tensor-parallel groups of
`rollout.tp` consecutive ranks. The ranks of one TP group must submit identical requests, so
`generate` gathers the group's prompts, runs them all, and hands each rank back its own.
Weights start as vLLM's dummy init and arrive through `push_weights` before the first
generation (DESIGN.md, "In-rank vLLM", lists what was verified and measured).

vllm is imported in this file only, and only after the cache variables point at
`rollout.cache_dir` (default `<trainer.output_dir>/.cache`), so a requeued job starts warm.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from hpc_ppo.config import BUILTIN_TINY_MODEL, ModelConfig, RolloutConfig, tp_error
from hpc_ppo.model import tiny_config
from hpc_ppo.rollout.allreduce import plan_allreduce
from hpc_ppo.rollout.base import Sample, SamplingSpec
from hpc_ppo.rollout.compile import compilation_config, describe, graph_batch_limit
from hpc_ppo.rollout.model_registry import models_inspected_in_process

log = logging.getLogger(__name__)

GiB = 1024**3
# Where each compile / JIT cache lives below the cache root.
CACHE_VARS = {
    "VLLM_CACHE_ROOT": "vllm",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
}


def point_caches(root: Path) -> dict[str, str]:
    """Set the cache variables under `root` before vllm (or flashinfer) is imported.

    Always overwritten, not defaulted: torch writes TORCHINDUCTOR_CACHE_DIR into os.environ
    (/tmp/torchinductor_root) the first time anything asks for inductor's cache folder, which
    happened before the engine started on the H100 host; a node-local folder that a requeued
    job on another node would find empty. rollout.cache_dir is the one knob.
    """
    for var, sub in CACHE_VARS.items():
        os.environ[var] = str(root / sub)
    return {var: os.environ[var] for var in CACHE_VARS}


def cache_root(rollout: RolloutConfig, output_dir: Path) -> Path:
    """`rollout.cache_dir`, else `<trainer.output_dir>/.cache`: beside the run folders, so
    every run of this output_dir (and every requeue) shares one warm cache."""
    if rollout.cache_dir:
        return Path(rollout.cache_dir).resolve()
    return output_dir / ".cache"


def model_dir(mc: ModelConfig, tokenizer: PreTrainedTokenizerBase, run_dir: Path, rank: int) -> str:
    """A directory with config.json: load_format="dummy" needs nothing else.

    The built-in model exists only as a config in code, so write it out; one folder per rank,
    so ranks sharing a run folder on a network file system never write the same file.
    """
    if mc.path != BUILTIN_TINY_MODEL:
        return mc.path
    out = run_dir / "vllm-model" / f"rank{rank}"
    tiny_config(mc, tokenizer).save_pretrained(out)
    return str(out)


def log_engine_ready(started: float, ready: float, imported: float, now: float) -> None:
    """The engine stage's split, one line (bench/step.py reads it): our checks and groups,
    vLLM's import, and LLM() itself."""
    log.info(
        "vLLM engine ready in %.1f s: CUDA, groups and plans %.1f, vLLM import %.1f, LLM() %.1f",
        now - started,
        ready - started,
        imported - ready,
        now - imported,
    )


def request_seed(seed: int, index: int) -> int:
    """Seed of prompt `index`'s request; vLLM gives its n samples seed, seed+1, ... seed+n-1.

    Hashed rather than `seed + index * n`, so steps, ranks and chunks (whose seeds differ by
    small integers) never share a random stream. Below 2**62: room for `+ n`, fits an int64.
    """
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def sampling_params(spec: SamplingSpec, index: int, eos_id: int):
    """What every engine of this project asks vLLM for (the bench's standalone LLM too)."""
    from vllm import SamplingParams

    forced = spec.forced_length(index)
    return SamplingParams(
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.max_new_tokens if forced is None else forced,
        ignore_eos=forced is not None,  # forced: exactly `forced` tokens, logits untouched
        logprobs=0,  # the sampled token's own logprob only
        flat_logprobs=True,  # a few flat lists per request instead of a dict per token
        seed=request_seed(spec.seed, index),
        detokenize=False,
        stop_token_ids=[] if forced is not None else [eos_id],
    )


def check_tp(tp: int, world: int) -> None:
    """The rule `hpc-ppo validate` checked, against the ranks this job really has."""
    error = tp_error(tp, world, f"this job's {world} rank(s)")
    if error:
        raise ValueError(error)


def check_free_memory(utilization: float, device: torch.device) -> None:
    """Fail before vLLM starts if what this process (FSDP, ...) already holds leaves too little.

    vLLM checks the same thing, but its message names neither our key nor what holds the
    memory. Sizing: vLLM takes gpu_memory_utilization x total for weights, activations and KV
    cache, even when kv_cache_memory_bytes fixes the cache size.
    """
    free, total = torch.cuda.mem_get_info(device)
    want = utilization * total
    if free >= want:
        return
    held = torch.cuda.memory_reserved(device)
    fits = math.floor((free / total - 0.02) * 100) / 100
    raise RuntimeError(
        f"rollout.gpu_memory_utilization={utilization} asks vLLM for "
        f"{want / GiB:.1f} GiB of {device}'s {total / GiB:.1f} GiB, but only "
        f"{free / GiB:.1f} GiB are free ({held / GiB:.1f} GiB reserved by this process's "
        "PyTorch tensors, the rest by other processes): "
        + (
            f"lower rollout.gpu_memory_utilization to {fits} or less"
            if fits > 0
            else "free GPU memory first (nothing is left for vLLM)"
        )
    )


def _tp_group(tp: int) -> dist.ProcessGroup | None:
    """This rank's TP group (gloo: it only carries prompt lists); every rank makes all of them."""
    if tp == 1:
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = None
    for first in range(0, world, tp):
        group = dist.new_group(list(range(first, first + tp)), backend="gloo")
        if first <= rank < first + tp:
            mine = group
    return mine


def _logprobs_of(logprobs: Any, tokens: Sequence[int]) -> list[float]:
    """The sampled tokens' logprobs from vLLM's per-position container."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; SamplingParams(logprobs=0) was not honoured")
    # FlatLogprobs with logprobs=0 holds exactly one entry per position: the sampled token.
    flat_ids = getattr(logprobs, "token_ids", None)
    if flat_ids is not None and list(flat_ids) == list(tokens):
        return list(logprobs.logprobs)
    return [position[token].logprob for position, token in zip(logprobs, tokens, strict=True)]


class VLLMEngine:
    """One rank's engine; `run_dir` is the run folder (the built-in model's config.json is
    written below it, and the caches default to `<its parent>/.cache`). `sequences_per_step`:
    the sequences one training step sends this engine from its whole TP group (it sizes the
    CUDA graphs unless rollout.cudagraph_max_batch does)."""

    def __init__(
        self,
        rollout: RolloutConfig,
        model: ModelConfig,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        *,
        seed: int,
        max_prompt_tokens: int,
        run_dir: Path,
        sequences_per_step: int,
    ):
        r = rollout
        started = time.perf_counter()
        if device.type != "cuda":
            raise ValueError(f"rollout.engine=vllm needs a CUDA device, got {device}")
        if not dist.is_initialized():
            raise RuntimeError("VLLMEngine: initialise torch.distributed first (hpc_ppo.dist)")
        self.rank, world = dist.get_rank(), dist.get_world_size()
        check_tp(r.tp, world)
        if tokenizer.eos_token_id is None:
            raise ValueError("rollout.engine=vllm: the tokenizer has no eos_token_id to stop on")
        self.eos_id = int(tokenizer.eos_token_id)
        self.device = device
        self.free_cache_engine = r.free_cache_engine
        self.caches = point_caches(cache_root(r, run_dir.parent))
        check_free_memory(r.gpu_memory_utilization, device)
        self.tp = r.tp
        self.tp_group = _tp_group(r.tp)
        hosts = [socket.gethostname()]
        if self.tp_group is not None:
            hosts = [None] * r.tp  # type: ignore[list-item]
            dist.all_gather_object(hosts, socket.gethostname(), group=self.tp_group)
        plan = plan_allreduce(r.allreduce, r.tp, os.environ, hosts)  # raises before vLLM starts
        os.environ.update(plan.env)  # read by vLLM when it builds its communicators
        log.info("rollout all-reduce (rollout.allreduce=%s): %s", r.allreduce, plan.description)
        self.allreduce = plan.description
        path = model_dir(model, tokenizer, run_dir, self.rank)

        graph_batch = graph_batch_limit(r.cudagraph_max_batch, sequences_per_step)
        compiled = compilation_config(
            r.compile, r.enforce_eager, plan.compilation_config, graph_batch
        )
        log.info("rollout model: %s", describe(r.compile, r.enforce_eager, graph_batch))
        ready = time.perf_counter()
        from vllm import LLM  # after point_caches: vLLM and FlashInfer read them at import

        imported = time.perf_counter()
        optional = {
            "kv_cache_memory_bytes": r.kv_cache_memory_bytes,
            "max_num_seqs": r.max_num_seqs,
            "max_num_batched_tokens": r.max_num_batched_tokens,
            "enable_prefix_caching": r.enable_prefix_caching,
            "enable_chunked_prefill": r.enable_chunked_prefill,
            "compilation_config": compiled,
        }
        with models_inspected_in_process():  # cold caches: no second interpreter (~20 s)
            self.llm = LLM(
                model=path,
                distributed_executor_backend="external_launcher",
                tensor_parallel_size=r.tp,
                enable_sleep_mode=r.free_cache_engine,
                load_format="dummy",  # the first push_weights fills the weights
                skip_tokenizer_init=True,  # token ids in, token ids out
                dtype="bfloat16",
                seed=seed,
                gpu_memory_utilization=r.gpu_memory_utilization,
                enforce_eager=r.enforce_eager,
                logprobs_mode="processed_logprobs",  # after temperature / top-p, as the trainer
                generation_config="vllm",  # ignore generation_config.json: no extra stop ids
                max_model_len=max_prompt_tokens + r.max_new_tokens,
                **{k: v for k, v in optional.items() if v is not None},
            )
        log_engine_ready(started, ready, imported, time.perf_counter())
        self._asleep = False  # vLLM starts awake; the first cycle's wakes are no-ops
        self.used_bytes_awake = (
            0  # device memory in use after the last generate: vLLM awake + training's tensors
        )
        self._slept_bytes = 0

    # ------------------------------------------------------------------ contract

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sample]:
        if self._asleep:
            raise RuntimeError("VLLMEngine.generate while asleep: call wake_weights/wake_cache")
        mine = [list(p) for p in prompts]
        blocks: list[tuple[list[list[int]], SamplingSpec]] = [(mine, sampling)]
        position = 0
        if self.tp_group is not None:
            blocks = [None] * self.tp  # type: ignore[list-item]
            dist.all_gather_object(blocks, (mine, sampling), group=self.tp_group)
            position = dist.get_rank(self.tp_group)
        requests, params = [], []
        for block, spec in blocks:
            for index, ids in enumerate(block):
                requests.append({"prompt_token_ids": ids})
                params.append(sampling_params(spec, index, self.eos_id))
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        free, total = torch.cuda.mem_get_info(self.device)
        self.used_bytes_awake = total - free
        start = sum(len(block) for block, _ in blocks[:position])
        samples = []
        for index, (ids, out) in enumerate(
            zip(mine, outputs[start : start + len(mine)], strict=True)
        ):
            for completion in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                samples.append(
                    Sample(
                        prompt_index=index,
                        prompt_ids=ids,
                        response_ids=tokens,
                        logprobs=_logprobs_of(completion.logprobs, tokens),
                        finished=completion.finish_reason == "stop",
                    )
                )
        return samples

    @torch.no_grad()
    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # Maps HF names onto vLLM's fused qkv / gate_up itself and slices this rank's TP shard.
        self.model.load_weights(weights)

    def sleep(self) -> None:
        """Level 2: drop weights and KV cache (no CPU copy: weights are pushed again anyway)."""
        if not self.free_cache_engine or self._asleep:
            return
        torch.cuda.synchronize(self.device)
        before = torch.cuda.mem_get_info(self.device)[0]
        self.llm.sleep(level=2)
        self._slept_bytes = max(torch.cuda.mem_get_info(self.device)[0] - before, 0)
        self._asleep = True

    def wake_weights(self) -> None:
        if not self._asleep:
            return
        # Training leaves blocks cached in PyTorch's allocator; vLLM's pool cannot use them.
        torch.cuda.empty_cache()
        self._check_room_to_wake()
        self.llm.wake_up(tags=["weights"])

    def wake_cache(self) -> None:
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def close(self) -> None:
        self.llm = None
        gc.collect()

    # ------------------------------------------------------------------ helpers

    @property
    def model(self) -> torch.nn.Module:
        """vLLM's model in this process (uniprocess executor: the worker lives here)."""
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    @property
    def slept_bytes(self) -> int:
        """GPU memory the last sleep gave back (weights + KV cache): what waking takes again."""
        return self._slept_bytes

    def _check_room_to_wake(self) -> None:
        free, total = torch.cuda.mem_get_info(self.device)
        if free >= self._slept_bytes:
            return
        # In use on the device, not torch.cuda.memory_allocated(): that also counts vLLM's
        # sleeping tensors, whose memory is unmapped.
        raise RuntimeError(
            f"vLLM cannot wake up on {self.device}: its weights and KV cache need "
            f"{self._slept_bytes / GiB:.1f} GiB, but only {free / GiB:.1f} GiB of "
            f"{total / GiB:.1f} GiB are free; {(total - free) / GiB:.1f} GiB are in use by "
            "training (FSDP parameters, gradients, optimizer state) and CUDA contexts: lower "
            "rollout.gpu_memory_utilization (or set rollout.kv_cache_memory_bytes), or reduce "
            "what training keeps on the GPU (trainer.micro_batch_size, "
            "model.gradient_checkpointing=true)"
        )
