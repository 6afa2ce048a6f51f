"""Policy, critic and reference models, and the tokenizer, for one rank.

    hpc-ppo run configs/tiny-cpu.yaml algo.kl_coef=0.01     # policy, reference and critic

Models come from a Hugging Face directory, or for the embedded default (`builtin:tiny-qwen2`)
from a Qwen2 config with a character tokenizer built in code: nothing is downloaded.
Every trained model is wrapped with FSDP2 (`fully_shard`), on CPU/gloo too, so the CPU path
runs the same sharded code as the GPU path.
"""

from __future__ import annotations

import importlib.util
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from hpc_ppo import attention
from hpc_ppo.config import BUILTIN_TINY_MODEL, ModelConfig
from hpc_ppo.errors import ConfigError

log = logging.getLogger(__name__)

TINY_SPECIALS = ["<pad>", "<eos>", "<unk>"]
TINY_CHARS = string.ascii_lowercase + string.digits + " :=#.,+-*/?!"
# "user: echo: abc assistant: ": chat-format prompts (verl / TRL layouts) work on the tiny model.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_tokenizer(mc: ModelConfig) -> PreTrainedTokenizerBase:
    if mc.path != BUILTIN_TINY_MODEL:
        tok = AutoTokenizer.from_pretrained(mc.path)
        if tok.pad_token_id is None:  # Llama-style tokenizers ship without one
            tok.pad_token = tok.eos_token
        return tok
    return tiny_tokenizer()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of TINY_CHARS.

    Built as a byte-level BPE without merges, i.e. Qwen2's pipeline: next to a qwen2
    config.json (an export), transformers 5's AutoTokenizer ignores tokenizer.json's pipeline
    and rebuilds Qwen2Tokenizer's (ByteLevel, so a space is "Ġ") from the vocab alone; a
    WordLevel vocab holding " " then lost every space on reload. Characters outside the vocab
    are dropped (BPE without an unk token), as the reloaded Qwen2Tokenizer does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_char = {chr(b): c for b, c in enumerate(_bytes_to_unicode())}
    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + [byte_char[c] for c in TINY_CHARS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_config(mc: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The built-in model's Qwen2 config (`model.tiny.*`), sized to the tokenizer."""
    t = mc.tiny
    return Qwen2Config(
        vocab_size=64 * ((len(tokenizer) + 63) // 64),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _dtype(mc: ModelConfig) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[mc.dtype]


def attn_implementation(mc: ModelConfig) -> str:
    """The transformers attention implementation of `model.attn_implementation`. `auto`:
    flash_attention_2 on a GPU with flash-attn installed, else `varlen` (attention.py:
    torch's varlen kernel on a GPU, sdpa row by row on the CPU, for packed micro-batches)."""
    choice = mc.attn_implementation
    have_flash = importlib.util.find_spec("flash_attn") is not None
    if choice == "auto":
        if have_flash and torch.cuda.is_available():
            return "flash_attention_2"
        return attention.register()
    if choice == "flash_attention_2" and not have_flash:
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 but flash-attn is not installed: "
            "pip install -e '.[flash]', or use model.attn_implementation=auto"
        )
    if choice == "varlen":
        return attention.register()
    return choice


# Implementations that read a packed micro-batch's rows by their bounds (attention.py,
# flash-attn); sdpa and eager build a [T, T] mask and attend over every pair of its T tokens.
PACKED_ROW_ATTENTION = ("auto", "varlen", "flash_attention_2")


def padding_free(choice: bool | None, mc: ModelConfig, device: torch.device) -> bool:
    """`trainer.padding_free`; null: on a GPU whose attention reads packed rows by their
    bounds. Not on the CPU (packed rows measured slower there: docs/PERFORMANCE.md), nor under
    sdpa or eager, where a packed micro-batch of 16 equal rows costs 16 times the attention
    work of the padded one (every pair of its tokens, under a [T, T] mask)."""
    if choice is not None:
        if choice and mc.attn_implementation not in PACKED_ROW_ATTENTION:
            log.warning(
                "trainer.padding_free=true under model.attn_implementation=%s: each packed "
                "micro-batch of T tokens gets a [T, T] mask and attention over all T x T "
                "pairs, slower than padding; use model.attn_implementation=auto",
                mc.attn_implementation,
            )
        return choice
    return device.type == "cuda" and mc.attn_implementation in PACKED_ROW_ATTENTION


def load_policy(
    mc: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    restore_on: torch.device | None = None,
) -> nn.Module:
    """The policy (or reference) as a causal LM; the tiny one is seeded so every rank agrees.
    `restore_on`: its architecture only, on that device, for a checkpoint restore
    (`for_restore`)."""
    if mc.path == BUILTIN_TINY_MODEL:
        conf = tiny_config(mc, tokenizer)
    else:
        conf = AutoConfig.from_pretrained(mc.path)
    return _load(AutoModelForCausalLM, mc.path, conf, mc, seed, restore_on)


def load_critic(
    mc: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    restore_on: torch.device | None = None,
) -> nn.Module:
    """A value model: the policy's backbone with a 1-output token head (no dropout: PPO
    values). `restore_on`: as for load_policy."""
    path = mc.critic_path or mc.path
    if path == BUILTIN_TINY_MODEL:
        conf = tiny_config(mc, tokenizer)
        conf.num_labels, conf.classifier_dropout = 1, 0.0
    else:
        conf = AutoConfig.from_pretrained(path, num_labels=1, classifier_dropout=0.0)
    return _load(AutoModelForTokenClassification, path, conf, mc, seed + 1, restore_on)


def _load(
    auto_class: type,
    path: str,
    conf: PretrainedConfig,
    mc: ModelConfig,
    seed: int,
    restore_on: torch.device | None,
) -> nn.Module:
    """The built-in model made from `conf` under `seed`, a folder's loaded with its weights, or
    either built for a restore on `restore_on`, in the mode its loading path leaves it."""
    builtin = path == BUILTIN_TINY_MODEL
    if restore_on is not None:
        return for_restore(auto_class, conf, mc, restore_on, training=builtin)
    kwargs = {"dtype": _dtype(mc), "attn_implementation": attn_implementation(mc)}
    if builtin:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return auto_class.from_config(conf, **kwargs)
    return auto_class.from_pretrained(path, config=conf, **kwargs)


def for_restore(
    auto_class: type, conf: PretrainedConfig, mc: ModelConfig, device: torch.device, training: bool
) -> nn.Module:
    """A model of `conf` whose weights a checkpoint restore is about to overwrite: built on the
    meta device and materialised on `device` directly, so a requeued job reads no weight file
    and copies nothing from host memory (the 0.5B policy: ~2 GB of fp32). The restore sets
    every parameter and persistent buffer (DCP fails on a missing key); init_weights()
    computes the rest (rotary frequencies) as from_pretrained does, on the host, and ties
    tied embeddings again. `training`: the mode the loading path leaves the model in
    (from_pretrained: eval; from_config: train)."""
    with torch.device("meta"):
        model = auto_class.from_config(
            conf, dtype=_dtype(mc), attn_implementation=attn_implementation(mc)
        )
    model.to_empty(device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.init_weights()  # its random draws leave the job's streams as they were
    return model.train(training)


@dataclass
class Models:
    """A rank's FSDP2-sharded models: the policy, and where the algorithm needs them the
    frozen reference (algo.kl_coef > 0) and the critic (PPO)."""

    policy: nn.Module
    ref: nn.Module | None = None
    critic: nn.Module | None = None


def build_models(
    mc: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    device: torch.device,
    with_ref: bool,
    with_critic: bool,
    restoring: bool = False,
) -> Models:
    """Load and shard the models. fp32 parameters on a GPU compute in bf16 (mixed precision).
    `restoring`: a checkpoint restore follows, so the trained models (policy, critic) are
    built without their weights (`for_restore`); the reference, which checkpoints do not
    hold, is loaded either way."""
    bf16 = device.type == "cuda" and mc.dtype == "float32"
    restore_on = device if restoring else None
    models = Models(shard(load_policy(mc, tokenizer, seed, restore_on), device, bf16))
    if with_ref:
        # The reference never trains: under mixed precision it computes in bf16 anyway, so
        # bf16 storage gives the same numbers in half the memory (fp32: 30 GB for a 7B model).
        ref = load_policy(mc, tokenizer, seed)
        models.ref = shard(ref.to(torch.bfloat16) if bf16 else ref, device, False).eval()
        models.ref.requires_grad_(False)
    if with_critic:
        models.critic = shard(load_critic(mc, tokenizer, seed, restore_on), device, bf16)
    if mc.gradient_checkpointing:
        for m in (models.policy, models.critic):
            if m is not None:
                m.gradient_checkpointing_enable()
    return models


def shard(model: nn.Module, device: torch.device, mixed_bf16: bool) -> nn.Module:
    """FSDP2: one unit per decoder layer, then the root (embeddings, norm, head)."""
    model.to(device)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_bf16
        else MixedPrecisionPolicy()
    )
    for layer in _decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: cannot find decoder layers to shard")
    return list(layers)


def full_state_iter(
    model: nn.Module, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Lazily gather the model's full parameters under their HF names, one FSDP2 unit at a
    time: one all-gather per unit (a decoder layer; the root's embeddings, norm and head),
    in the unit's compute dtype (bf16 under mixed precision, so a fp32 model needs no cast),
    instead of one per parameter. Each tensor is valid until the next is asked for (the unit
    is resharded after its last); consumers copy as they go (engines' push_weights).

    Every rank must consume the whole iterator: the all-gathers are collectives.
    """
    paths = {module: name for name, module in model.named_modules()}
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:  # not sharded (export, tests): the parameters as they are
        for name, param in model.named_parameters():
            yield name, _cast(param.detach(), dtype)
        return
    unit_paths = [paths[u] for u in units]
    for unit in reversed(units):  # the layers, then the root
        prefix = paths[unit]
        inner = [p + "." for p in unit_paths if p != prefix and p.startswith(prefix)]
        # A forward without backward leaves the root unsharded, and its unsharded copy goes
        # stale once the optimizer steps the shards; unshard() would then gather nothing.
        unit.reshard()
        unit.unshard()
        try:
            for name, param in unit.named_parameters():
                full = f"{prefix}.{name}" if prefix else name
                if any(full.startswith(p) for p in inner):
                    continue  # a child unit's, gathered with it
                tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
                yield full, _cast(tensor.detach(), dtype)
        finally:
            unit.reshard()


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None else tensor
