"""What tests/config shares: the demo config, the error lines a bad input gives, a config's
leaves.

Run: python -m pytest tests/config -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import TINY

from hpc_ppo.config import load_config
from hpc_ppo.errors import ConfigError


@pytest.fixture
def tiny() -> Path:
    """configs/tiny-cpu.yaml: the CPU demo, valid as it is."""
    return Path(TINY)


@pytest.fixture
def errors_of() -> Callable[..., list[str]]:
    """errors_of(path, overrides, **load_config options): the error lines load_config raises
    for this input (fails the test if it loads)."""

    def errors_of(path: str | Path | None, overrides: list[str], **options) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_config(path, overrides, **options)
        return str(info.value).splitlines()

    return errors_of


@pytest.fixture
def leaves() -> Callable[[dict], dict]:
    """leaves(nested dict) -> {"a.b": value}, values as they are (not as text)."""

    def leaves(d: dict, prefix: str = "") -> dict:
        return dict(_leaves(d, prefix))

    return leaves


def _leaves(d: dict, prefix: str) -> Iterator[tuple[str, object]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
