"""`hpc-ppo export-hf`: a transformers folder from a checkpoint of FSDP2-sharded models.

Run: python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, gloo_rank, qwen2_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

from hpc_ppo import checkpoint as ckpt
from hpc_ppo.checkpoint import Checkpointable
from hpc_ppo.cli import main
from hpc_ppo.config import Config, load_config, save_config
from hpc_ppo.model import (
    TINY_CHARS,
    build_tokenizer,
    full_state_iter,
    load_critic,
    load_policy,
    shard,
    tiny_tokenizer,
)

TEXTS = ["echo: abc", TINY_CHARS, "  two  spaces ", "12 + 3 = 15?", "a,b.c!"]


@dataclass
class Trained:
    run_dir: Path
    policy: dict[str, torch.Tensor]  # the saved policy's full weights, as training held them


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """A run folder whose step_2 checkpoint holds FSDP2 models moved away from their init.

    Written in this process by one gloo rank (quicker than `hpc-ppo run`); checkpoints of two
    ranks are read the same way by tests/test_preempt_local.py.
    """
    run_dir = tmp_path_factory.mktemp("export") / "r"
    return train_and_save(load_config(TINY), run_dir)


def train_and_save(cfg: Config, run_dir: Path) -> Trained:
    """`cfg`'s policy and critic, one optimizer step each, saved as run_dir's step_2."""
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    tok = build_tokenizer(cfg.model)
    with gloo_rank():
        parts = []
        ids = torch.tensor([tok("echo: abc").input_ids])
        for name, model in (
            ("policy", load_policy(cfg.model, tok, cfg.trainer.seed)),
            ("critic", load_critic(cfg.model, tok, cfg.trainer.seed)),
        ):
            model = shard(model, torch.device("cpu"), mixed_bf16=False)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            model(input_ids=ids).logits.square().mean().backward()
            opt.step()
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            parts.append(Checkpointable(name, model, opt, sched))
        ckpt.save(run_dir, 2, parts, {"sampler": {}}, keep=2)
        policy = {k: v.clone() for k, v in full_state_iter(parts[0].model)}
    return Trained(run_dir, policy)


def checkpoint_policy(run_dir: Path, step: int) -> torch.nn.Module:
    cfg = load_config(run_dir / "config.yaml")
    model = load_policy(
        cfg.model, build_tokenizer(cfg.model), cfg.trainer.seed + 100
    )  # must be overwritten
    ckpt.load_model_only(ckpt.resolve_step(run_dir, step), "policy", model)
    return model.eval()


def test_export_loads_with_transformers_equals_the_checkpoint_and_generates(
    trained, tmp_path, capsys
):
    out = tmp_path / "hf"
    assert main(["export-hf", str(trained.run_dir), str(out)]) == 0
    assert f"exported {trained.run_dir}/checkpoints/step_2 -> {out}" in capsys.readouterr().out

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    policy = checkpoint_policy(trained.run_dir, 2)
    exported, want = model.state_dict(), policy.state_dict()
    assert exported.keys() == want.keys() == trained.policy.keys()
    assert all(torch.equal(exported[k], want[k]) for k in want)
    assert all(torch.equal(exported[k], v) for k, v in trained.policy.items())
    cfg = load_config(trained.run_dir / "config.yaml")
    init = load_policy(cfg.model, build_tokenizer(cfg.model), cfg.trainer.seed).state_dict()
    assert not torch.equal(init["lm_head.weight"], exported["lm_head.weight"])  # trained

    ids = tok("echo: abc", return_tensors="pt").input_ids
    kw = dict(do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        ref = policy.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    assert gen.shape[1] > ids.shape[1]
    assert torch.equal(gen, ref)
    assert tok.decode(gen[0]).startswith("echo: abc")


def test_export_of_a_folder_model_reads_no_weight_file_and_keeps_its_generation_config(
    tmp_path, capsys
):
    """A run on a Hugging Face folder: the export takes every weight from the checkpoint (the
    folder's weights file is gone) and keeps the folder's sampling defaults and stop tokens."""
    folder = tmp_path / "model"
    tok = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        conf = qwen2_config(len(tok), pad_token_id=tok.pad_token_id)
        AutoModelForCausalLM.from_config(conf).save_pretrained(folder)
    tok.save_pretrained(folder)
    gen = GenerationConfig(
        do_sample=True, temperature=0.6, top_p=0.8, eos_token_id=[tok.eos_token_id, 7]
    )
    gen.save_pretrained(folder)
    cfg = load_config(TINY, [f"model.path={folder}"])
    trained = train_and_save(cfg, tmp_path / "run")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()

    out = tmp_path / "hf"
    assert main(["export-hf", str(trained.run_dir), str(out)]) == 0, capsys.readouterr()
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert exported.keys() == trained.policy.keys()
    assert all(torch.equal(exported[k], v) for k, v in trained.policy.items())
    kept = GenerationConfig.from_pretrained(out)
    assert (kept.temperature, kept.top_p, kept.eos_token_id) == (0.6, 0.8, [tok.eos_token_id, 7])


def test_exported_tokenizer_roundtrips_and_matches_the_training_one(trained, tmp_path):
    out = tmp_path / "hf"
    assert main(["export-hf", str(trained.run_dir), str(out)]) == 0
    tok, train_tok = AutoTokenizer.from_pretrained(out), tiny_tokenizer()
    assert tok.decode(tok("echo: abc").input_ids) == "echo: abc"
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == train_tok(text, add_special_tokens=False).input_ids, text
        assert len(ids) == len(text), text  # one token per character
        assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.eos_token_id) == (train_tok.pad_token_id, train_tok.eos_token_id)
    assert len(tok) == len(train_tok)


def test_tiny_tokenizer_roundtrips_next_to_a_qwen2_config(tmp_path):
    """transformers 5 loads any tokenizer beside a qwen2 config.json as Qwen2Tokenizer, which
    rebuilds its pipeline from the vocab: the saved one must survive that (it lost spaces)."""
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=64).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert reloaded(text, add_special_tokens=False).input_ids == ids, text
        assert reloaded.decode(ids) == tok.decode(ids) == text
    eos = [*tok("ab").input_ids, tok.eos_token_id, tok.pad_token_id]
    assert reloaded.decode(eos, skip_special_tokens=True) == "ab"


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder with complete (empty) checkpoints at steps 3 and 12: enough to pick one."""
    run_dir = tmp_path / "run"
    for step in (3, 12):
        folder = run_dir / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / ckpt.COMPLETE).write_text("")
        (folder / "trainer.json").write_text("{}")
    shutil.copy(TINY, run_dir / "config.yaml")
    return run_dir


def test_export_of_a_missing_step_lists_the_steps(fake_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export-hf", str(fake_run), "--step", "5", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --step 5 not found: "), err
    assert f"{fake_run}/checkpoints has steps [3, 12]" in err
    assert not out.exists()


def test_export_refuses_a_non_empty_output_folder(fake_run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-hf", str(fake_run), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_of_a_checkpoint_that_does_not_fit_is_a_clear_error(trained, tmp_path, capsys):
    run_dir = tmp_path / "r"
    shutil.copytree(trained.run_dir, run_dir)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["model"]["tiny"]["intermediate_size"] = 256
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "hf"
    assert main(["export-hf", str(run_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {run_dir}/checkpoints/step_2 does not fit"), err
    assert "Size mismatch between saved torch.Size([128, 64]) and current" in err, err
    assert not out.exists()


def test_export_files_follow_the_umask_and_bf16_halves_the_size(trained, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["export-hf", str(trained.run_dir), str(tmp_path / "a")]) == 0
        assert (
            main(["export-hf", str(trained.run_dir), "--dtype", "bfloat16", str(tmp_path / "b")])
            == 0
        )
    finally:
        os.umask(old)
    for f in (tmp_path / "a").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f  # transformers wrote 0600
    fp32 = (tmp_path / "a" / "model.safetensors").stat().st_size
    bf16 = (tmp_path / "b" / "model.safetensors").stat().st_size
    assert 0.45 < bf16 / fp32 < 0.55, (bf16, fp32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert model.dtype == torch.bfloat16
    want = {k: v.to(torch.bfloat16) for k, v in trained.policy.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
