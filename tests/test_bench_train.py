"""bench/train.py on the CPU default: the trainer's scoring passes and update on a synthetic
batch, padded and packed, in one process; both score the same log-probs before any update."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_padded_and_packed_variants_report_and_agree(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "train.py"),
            "--shape=tiny",
            "--device=cpu",
            "--iters=2",
            "--lengths=1:10",
            "--variant=trainer.padding_free=false",
            "--variant=trainer.padding_free=true trainer.max_tokens_per_micro_batch=400",
            "--profile=1",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    padded, packed = json.loads(out.stdout)["variants"]
    assert not padded["padding_free"] and packed["padding_free"]
    assert padded["real_tokens"] == packed["real_tokens"] == packed["computed_tokens"]
    assert padded["computed_tokens"] > padded["real_tokens"]  # lengths 1-10: padding
    assert packed["micro_batches"] > padded["micro_batches"]  # the 400-token budget
    assert packed["max_logprob_diff_vs_first"] < 1e-4
    for v in (padded, packed):
        assert {"old_logprob", "values", "update_actor", "update_critic"} <= set(v["median_s"])
        assert v["train_tokens_per_s"] > 0
    assert padded["profile"] is None
    assert "phase/update" in open(packed["profile"]).read()
