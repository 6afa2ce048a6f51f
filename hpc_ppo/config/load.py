"""Reading a config: YAML file + dotted `key=value` overrides -> a typed, validated tree; and
writing it back (YAML, flat params for MLflow).

    hpc-ppo validate configs/tiny-cpu.yaml actor.lr=1e-4 rollout.n=8

Every type error is collected and reported with the others, one line each naming the key, the
value and the fix; the rules of validate.py run once the tree is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.config.foreign import foreign_hint, leaves
from hpc_ppo.config.schema import Config
from hpc_ppo.config.validate import Launcher, validate
from hpc_ppo.errors import ConfigError


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    check_paths: bool = True,
    launcher: Launcher | None = None,
) -> Config:
    """Read a YAML file, apply `a.b=value` overrides, build and validate the tree.

    launcher: whose world rules to check as well, see validate.validate ("local" for
    `hpc-ppo run`, "slurm" for submit / render-sbatch / prepare; None: a saved config read back).
    check_paths=False skips the checks that model.path, model.critic_path and data.path exist
    on this machine (`hpc-ppo submit --dry-run` on a login node without the model).
    """
    raw = {} if path is None else read_yaml(Path(path))
    errors: list[str] = []
    for item in overrides:
        _apply_override(raw, item, errors)
    cfg = _build(Config, raw, "", errors)
    if not errors:
        errors.extend(validate(cfg, launcher=launcher, check_paths=check_paths))
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def read_yaml(path: Path) -> dict[str, Any]:
    """The sections of a YAML config file; ConfigError if it is unreadable, not YAML, not a
    mapping, or gives a key twice (every duplicate, as file:line)."""
    if path.is_dir():
        hint = (
            f" (resume a run folder with: hpc-ppo run {path})"
            if (path / "config.yaml").is_file()
            else ""
        )
        raise ConfigError(f"config file {path} is a directory, expected a YAML file{hint}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e})".replace("\n", " ")) from None
    loader = _UniqueKeyLoader(text)
    try:
        raw = loader.get_single_data() or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}".replace("\n", " ")) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(
            "\n".join(
                f"{path}:{line}: duplicate key {key} (first at line {first}); keep one of them"
                for key, line, first in loader.duplicates
            )
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that lists every key given twice in one mapping, which PyYAML accepts
    silently (the last one wins): two `lr:` lines under `actor:` ran with the second."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # (dotted key, line, first line)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self.duplicates = _duplicate_keys(node, "", set())
        return self.construct_document(node)


def _duplicate_keys(node: yaml.Node, prefix: str, seen: set[int]) -> list[tuple[str, int, int]]:
    if id(node) in seen:  # an alias of a node already walked (or a recursive one)
        return []
    seen.add(id(node))
    found: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides by design
                continue
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in first:
                found.append((key, line, first[key]))
            else:
                first[key] = line
            found += _duplicate_keys(value_node, f"{key}.", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{prefix.removesuffix('.')}[{i}].", seen)
    return found


@dataclass(frozen=True)
class _Typed:
    """A number read from a command-line override, with the text as typed (YAML 1.1 reads
    12:00:00 as the integer 43200); a string field takes the text."""

    value: int | float
    text: str


def _apply_override(raw: dict, item: str, errors: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        errors.append(f"override {item!r}: expected key=value, e.g. actor.lr=1e-6")
        return
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _Typed(value, text)  # a string field keeps what was typed: slurm.time=12:00:00
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # absent, or an empty section in the YAML ("critic:" alone)
            child = node[part] = {}
        if not isinstance(child, dict):
            errors.append(f"{key}: {part} is a value, not a section")
            return
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, errors: list[str], base: Any = None) -> Any:
    """Dataclass `cls` from a mapping, type-checking each field; unknown keys get a suggestion.

    Keys absent from `raw` keep `base`'s values: the parent's default for this section, which
    may differ from the class default (critic.lr=1e-5 vs OptimConfig.lr=1e-6).
    """
    base = cls() if base is None else base
    if raw is None:
        raw = {}
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, dict):
        section = prefix.rstrip(".")
        shown = raw.text if isinstance(raw, _Typed) else repr(raw)  # as the user typed it
        errors.append(
            f"{section}: expected a section (mapping) of keys such as {section}.{names[0]},"
            f" got {shown}"
        )
        return base
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            errors.append(
                f"{prefix}{key}: unknown key; {_unknown_key_hint(prefix, key, value, names)}"
            )
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", errors, getattr(base, key))
        else:
            typed = value
            if isinstance(value, _Typed):
                value, typed = value.value, value.text
            ok, converted = _coerce(value, tp)
            if not ok and typed is not value:
                ok, converted = _coerce(typed, tp)
            if ok:
                kwargs[key] = converted
            else:
                errors.append(f"{prefix}{key}={value!r}: expected {_type_name(tp)}")
    return dataclasses.replace(base, **kwargs)


def _unknown_key_hint(prefix: str, key: str, value: Any, names: list[str]) -> str:
    """verl's or TRL's name for a key first (config/foreign.py), else the closest spelling."""
    found = [
        (path, hint)
        for path, leaf in leaves(value, f"{prefix}{key}")
        if (hint := foreign_hint(path, leaf.text if isinstance(leaf, _Typed) else leaf))
    ]
    if len(found) == 1 and found[0][0] == f"{prefix}{key}":
        return found[0][1]
    if found:  # a foreign section (actor_rollout_ref: ...): each leaf that has a key here
        return "; ".join(f"{path}: {hint}" for path, hint in found)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    return f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, v = _coerce(value, arg)
                if ok:
                    return True, v
        return False, None
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, None
        out = [_coerce(v, arg) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, None
        out = [_coerce(v, a) for v, a in zip(value, args, strict=False)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), float(
            value
        ) if isinstance(value, (int, float)) else None
    if tp is str:
        return isinstance(value, str), value
    return False, None


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(args)} numbers"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(args[0])}s"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML / MLflow params."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config atomically (temp file, fsync, rename)."""
    atomic_write_text(path, dump_yaml(cfg))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 1e-6}, "stop": [1, 2]} -> {"optim.lr": "1e-06", "stop": "[1, 2]"}."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = str(v)
    return out


def add_config_arguments(
    parser: argparse.ArgumentParser, config_help: str, optional: bool = False
) -> None:
    """A command's CONFIG and `key=value ...` overrides, as every hpc-ppo command takes them."""
    parser.add_argument("config", nargs="?" if optional else None, help=config_help)
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. actor.lr=1e-6"
    )
