"""trainer.profile_steps: the chosen step runs under torch.profiler and leaves an operator
table (with the step's phases named) and a Chrome trace in RUN_DIR/profile; others leave none."""

from __future__ import annotations

import json

from helpers import TINY, metrics, run_ok


def test_the_chosen_step_is_profiled_and_only_it(tmp_path):
    run_dir = run_ok(
        TINY, "trainer.total_steps=2", "trainer.profile_steps=[1]", f"trainer.output_dir={tmp_path}"
    )
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == [
        "step_1.rank0.json",
        "step_1.rank0.txt",
    ]
    table = (run_dir / "profile" / "step_1.rank0.txt").read_text()
    assert "# by self CPU time" in table
    for phase in ("generate", "old_logprob", "update"):
        assert f"phase/{phase}" in table, phase
    trace = json.loads((run_dir / "profile" / "step_1.rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "phase/update" in names and "aten::mm" in names
    assert [r["step"] for r in metrics(run_dir) if "reward/mean" in r] == [0, 1]
