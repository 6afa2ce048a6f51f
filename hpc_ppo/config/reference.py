"""The configuration reference: every key, its default and its doc, as the README's table.

    python -m hpc_ppo.config.reference      # print the table (also: python -m hpc_ppo.config)

tests/test_readme.py keeps the README's table equal to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from hpc_ppo.config.schema import Config


def reference(obj: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field: the README's configuration reference."""
    obj = Config() if obj is None else obj
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(reference(value, f"{prefix}{f.name}."))
            continue
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc = (
                (doc + "; " if doc else "") + "one of " + ", ".join(map(str, f.metadata["choices"]))
            )
        shown = yaml.safe_dump(
            list(value) if isinstance(value, tuple) else value, default_flow_style=True
        )
        rows.append((f"{prefix}{f.name}", shown.strip().removesuffix("...").strip(), doc))
    return rows


def reference_markdown() -> str:
    """The README's configuration table (tests keep the README equal to it)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in reference()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
