"""Tests for hpc_ppo/bundle/resolve.py: pip's resolution checked with the target's markers,
--skip, and pip's failures as one line. pip runs for real, against a folder of made-up wheels.

Run: python -m pytest tests/bundle/test_resolve.py -q
"""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from hpc_ppo.bundle.resolve import Pin, _closure, download, resolve
from hpc_ppo.bundle.target import make_target
from hpc_ppo.errors import BundleError

PY312 = make_target("3.12", "manylinux_2_28_x86_64")


def pins(*items: Pin) -> dict[str, Pin]:
    return {p.name: p for p in items}


def test_the_targets_markers_decide_what_is_kept_and_what_is_missing():
    # As pip resolves on a 3.10 login node for a 3.12 target: tomli in, six out.
    app = Pin(
        "app",
        "1.0",
        ('six; python_version > "3.11"', 'tomli; python_version < "3.11"', "attrs>=2"),
        requested=True,
    )
    keep, missing = _closure(pins(app, Pin("tomli", "2.0"), Pin("attrs", "1.0")), PY312, {})
    assert keep == {"app"}
    assert missing == ["six", "attrs>=2"]  # absent, and pinned outside the range


def test_extras_are_followed_only_where_requested():
    app = Pin(
        "app", "1", ('fast; extra == "speed"', 'slow; extra == "other"'), True, frozenset({"speed"})
    )
    keep, missing = _closure(pins(app, Pin("fast", "1"), Pin("slow", "1")), PY312, {})
    assert keep == {"app", "fast"} and missing == []


def test_a_skipped_package_and_what_only_it_needs_stay_out():
    app = Pin("app", "1", ("torch==2.11.0", "filelock"), requested=True)
    torch = Pin("torch", "2.11.0", ("nvidia-cublas", "filelock"))
    skip = {"torch": Requirement("torch==2.11.0+cu130")}
    all_pins = pins(app, torch, Pin("nvidia-cublas", "13"), Pin("filelock", "3"))
    keep, missing = _closure(all_pins, PY312, skip)
    assert keep == {"app", "filelock"} and missing == []


def test_a_skipped_version_the_others_do_not_accept_names_the_flag():
    app = Pin("app", "1", ("torch==2.11.0",), requested=True)
    skip = {"torch": Requirement("torch==2.10.0")}
    with pytest.raises(BundleError, match=r"--skip torch==2.10.0: app 1 needs torch==2.11.0"):
        _closure(pins(app, Pin("torch", "2.10.0")), PY312, skip)


@pytest.fixture
def index(tmp_path, wheel, pip_sees_only):
    """A folder of wheels, the only thing pip sees: `native` has a cp311 wheel only."""
    folder = tmp_path / "index"
    folder.mkdir()
    wheel(folder, "native", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    wheel(folder, "app", "1.0", requires=("native>=1",))
    wheel(folder, "pure", "2.0", requires=('native; python_version < "3.0"',))
    pip_sees_only(folder)
    return folder


def test_pip_takes_an_older_manylinux_wheel_for_a_newer_glibc(index, tmp_path):
    got = resolve(["app"], make_target("3.11", "manylinux_2_28_x86_64"), [], [])
    assert {n: p.version for n, p in got.items()} == {"app": "1.0", "native": "1.0"}
    (tmp_path / "dl").mkdir()
    files = download(got.values(), make_target("3.11", "manylinux_2_28_x86_64"), tmp_path / "dl")
    assert sorted(f.name for f in files) == [
        "app-1.0-py3-none-any.whl",
        "native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    ]


def test_no_wheel_for_the_target_names_requirement_tags_and_fix(index):
    with pytest.raises(BundleError) as info:
        resolve(["app"], PY312, [], [])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("no wheel of native>=1 (from app")
    assert "Python 3.12 (cp312) on manylinux_2_28_x86_64" in msg
    assert "cp312-cp312, cp3{2..12}-abi3" in msg and "manylinux_2_28_x86_64 down to" in msg
    for fix in ("another --platform", "--skip native==VERSION", "pip wheel --no-deps 'native>=1'"):
        assert fix in msg


def test_no_wheel_of_a_constrained_version_names_it_too(index, tmp_path):
    constraints = tmp_path / "c.txt"
    constraints.write_text("native==1.0\n")
    with pytest.raises(
        BundleError, match=r"^no wheel of native .*cp312.*pip wheel --no-deps .native==1.0."
    ):
        resolve(["app"], PY312, [constraints], [])


def test_the_target_python_decides_a_marker_pip_evaluated_for_this_one(index):
    # `native; python_version < "3.0"` is needed by no Python 3: pure needs no native wheel.
    got = resolve(["pure"], PY312, [], [])
    assert list(got) == ["pure"]


def test_packages_the_node_has_at_an_accepted_version_stay_out():
    from hpc_ppo.bundle.resolve import on_node

    app = Pin(
        "app",
        "1",
        ("lib>=2", "util", 'fast; extra == "speed"', "hpc-ppo"),
        True,
        frozenset({"speed"}),
    )
    resolved = pins(
        app, Pin("lib", "2.5"), Pin("util", "1.0"), Pin("fast", "3"), Pin("hpc-ppo", "0.1")
    )
    have = {"lib": "1.9", "util": "1.2", "fast": "3", "hpc-ppo": "0.1", "other": "1"}
    bundle, out = on_node(resolved, PY312, have)
    assert sorted(bundle) == ["app", "hpc-ppo", "lib"]  # lib 1.9 fails >=2; hpc-ppo always
    assert sorted(str(r) for r in out) == ["fast==3", "util==1.2"]
    # a requirement behind a requested extra counts; behind another extra it does not
    extra = ('fast>=4; extra == "speed"', 'fast<3; extra == "slow"')
    strict = pins(Pin("app", "1", extra, True, frozenset({"speed"})), Pin("fast", "4"))
    assert sorted(on_node(strict, PY312, {"fast": "3"})[0]) == ["app", "fast"]
    assert sorted(on_node(strict, PY312, {"fast": "4.1"})[0]) == ["app"]


def test_node_packages_file_is_pip_freeze(tmp_path):
    from hpc_ppo.bundle.target import parse_node_packages
    from hpc_ppo.errors import ConfigError

    freeze = tmp_path / "freeze.txt"
    freeze.write_text(
        "# pip freeze\nTorch==2.11.0+cu130\n-e git+https://x#egg=y\nz @ file:///z.whl\nnumpy==2.3.5\n"
    )
    assert parse_node_packages(freeze) == {"torch": "2.11.0+cu130", "numpy": "2.3.5"}
    freeze.write_text("torch>=2\n")
    with pytest.raises(ConfigError, match="line 1: 'torch>=2' is not NAME==VERSION"):
        parse_node_packages(freeze)
