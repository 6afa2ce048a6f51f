"""Write the tiny prompt sets in verl's and TRL's layouts that configs/tiny-verl.yaml uses.

    python tests/data/make_tiny_sets.py        # rewrites tests/data/verl_tiny, tests/data/trl_tiny

Nothing is downloaded: the prompts are the CPU demo's "letters" task ("echo: cabd", scored by
the letters reward) and small sums ("sum: 2+3", scored by gsm8k: "#### 5"), two data sources.
verl's layout is examples/data_preprocess/gsm8k.py's: data_source, a chat-message prompt,
ability, reward_model.ground_truth, extra_info. TRL's is the conversational one: `messages`
ending in the assistant's reference answer (dropped from the prompt), and an `answer` field.
tests/test_tiny_sets.py checks the committed files equal what this script writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
LETTERS, SUMS = "synthetic/letters", "synthetic/sums"
SIZES = {"train": 64, "val": 16}  # half letters, half sums


def rows(split: str, seed: int) -> list[dict]:
    """verl-layout rows of one split, the two sources interleaved."""
    rng = random.Random(seed)
    out = []
    for i in range(SIZES[split]):
        if i % 2 == 0:
            word = "".join(rng.choices("abcdefgh", k=rng.randint(3, 6)))
            source, text, truth = LETTERS, f"echo: {word}", "".join(sorted(set(word)))
        else:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            source, text, truth = SUMS, f"sum: {a}+{b}", str(a + b)
        out.append(
            {
                "data_source": source,
                "prompt": [{"role": "user", "content": text}],
                "ability": "toy",
                "reward_model": {"style": "rule", "ground_truth": truth},
                "extra_info": {"split": split, "index": i},
            }
        )
    return out


def trl_row(row: dict) -> dict:
    truth = row["reward_model"]["ground_truth"]
    reference = f"#### {truth}" if row["data_source"] == SUMS else truth
    messages = row["prompt"] + [{"role": "assistant", "content": reference}]
    return {"messages": messages, "answer": truth, "data_source": row["data_source"]}


def write(root: Path = HERE) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = []
    for seed, split in enumerate(SIZES):
        data = rows(split, seed)
        verl = root / "verl_tiny" / f"{split}.parquet"
        trl = root / "trl_tiny" / f"{split}.jsonl"
        verl.parent.mkdir(parents=True, exist_ok=True)
        trl.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(data), verl)
        trl.write_text("".join(json.dumps(trl_row(r)) + "\n" for r in data))
        written += [verl, trl]
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
