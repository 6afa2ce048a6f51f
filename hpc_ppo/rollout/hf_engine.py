"""Rollout engine on transformers `generate`: the CPU twin of the in-rank vLLM engine.

    hpc-ppo run configs/tiny-cpu.yaml       # rollout.engine=hf, the CPU default

It keeps its own unsharded copy of the policy and receives the same `push_weights` stream as
vLLM, so every CPU test exercises the weight-sync path. Sleep/wake are no-ops: on a CPU there
is no accelerator memory to hand back.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import GenerationConfig

from hpc_ppo.rollout.base import Sample, SamplingSpec


class HFEngine:
    def __init__(
        self,
        model: nn.Module,
        eos_id: int,
        pad_id: int,
        device: torch.device,
        batch_size: int = 256,
    ):
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        # generate() fills what a call leaves unset from the model's generation_config, which
        # from_pretrained reads from the folder (Qwen2.5's: repetition_penalty 1.1, top_k 20):
        # samples then come from another distribution than the one the trainer scores. A
        # neutral one instead, as the vLLM engine ignores the folder's (generation_config="vllm").
        self.model.generation_config = GenerationConfig()
        self.eos_id, self.pad_id, self.device = eos_id, pad_id, device
        self.batch_size = batch_size
        self._params = dict(self.model.named_parameters())

    @torch.no_grad()
    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        seen = set()
        for name, tensor in weights:
            if name not in self._params:
                raise KeyError(f"push_weights: {name} is not a parameter of the rollout model")
            self._params[name].copy_(tensor)
            seen.add(name)
        missing = set(self._params) - seen
        if missing:
            raise KeyError(
                f"push_weights: no tensor for {sorted(missing)[:5]} ({len(missing)} missing)"
            )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sample]:
        # A private RNG stream per call: a step's samples depend on (seed, prompts) only, which
        # keeps resumed runs identical to uninterrupted ones.
        expanded = [(i, p) for i, p in enumerate(prompts) for _ in range(sampling.n)]
        out: list[Sample] = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(sampling.seed)
            for start in range(0, len(expanded), self.batch_size):
                out.extend(
                    self._generate_chunk(expanded[start : start + self.batch_size], sampling)
                )
        return out

    def _generate_chunk(
        self, chunk: list[tuple[int, list[int]]], sampling: SamplingSpec
    ) -> list[Sample]:
        width = max(len(p) for _, p in chunk)
        ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (_, p) in enumerate(chunk):  # left padding: generation continues every row
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        # temperature 0 is greedy decoding (validation), which generate spells do_sample=False.
        how = (
            {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            if sampling.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None}
        )
        # Forced lengths (benchmarks): no stop token, every row to the chunk's longest, each
        # then cut to its own length; the logits stay untouched, as with vLLM's ignore_eos.
        forced = [sampling.forced_length(index) for index, _ in chunk]
        gen = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            **how,
            top_k=0 if sampling.temperature > 0 else None,
            max_new_tokens=sampling.max_new_tokens if None in forced else max(forced),
            eos_token_id=self.eos_id if None in forced else None,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        new = gen.sequences[:, width:].cpu()
        # `scores` are the processed logits (after temperature / top-p) the tokens were drawn from.
        scores = torch.stack(gen.scores, dim=1).float().cpu()
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        samples = []
        for row, (index, prompt) in enumerate(chunk):
            tokens = new[row].tolist()
            finished = forced[row] is None and self.eos_id in tokens
            length = tokens.index(self.eos_id) + 1 if finished else len(tokens)
            length = length if forced[row] is None else forced[row]
            samples.append(
                Sample(
                    index, list(prompt), tokens[:length], logprobs[row, :length].tolist(), finished
                )
            )
        return samples

    def sleep(self) -> None:
        pass

    def wake_weights(self) -> None:
        pass

    def wake_cache(self) -> None:
        pass

    def close(self) -> None:
        pass
