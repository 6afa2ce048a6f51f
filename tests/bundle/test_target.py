"""Tests for hpc_ppo/bundle/target.py and the bundle command's flags: every bad flag is an
error that names the flag and the fix, before anything is built or downloaded.

Run: python -m pytest tests/bundle/test_target.py -q
"""

from __future__ import annotations

import pytest
from packaging.markers import Marker

from hpc_ppo.bundle.target import Target, make_target, parse_extras, this_machine
from hpc_ppo.cli import main
from hpc_ppo.errors import ConfigError


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--python", "3"], ["--python 3:", "e.g. --python 3.12"]),
        (["--python", "python3.12"], ["--python python3.12:", "major.minor"]),
        (["--split-mb", "0"], ["--split-mb 0:", "e.g. --split-mb 60"]),
        (["--split-mb", "1.5"], ["--split-mb 1.5:", "whole MB"]),
        (["--platform", "win_amd64"], ["--platform win_amd64:", "manylinux_2_28_x86_64"]),
        (["--platform", "manylinux_2_28"], ["--platform manylinux_2_28:", "ldd --version"]),
        (["--skip", "torch"], ["--skip torch:", "e.g. --skip torch==2.11.0"]),
        (["--skip", "torch>=2.11"], ["--skip torch>=2.11:", "NAME==VERSION"]),
        (["--constraints", "/nonexistent/c.txt"], ["--constraints /nonexistent/c.txt: no such"]),
    ],
)
def test_a_bad_flag_is_one_line_naming_it_and_the_fix(tmp_path, capsys, flags, fragments):
    out = tmp_path / "b"
    assert main(["bundle", "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_full_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    assert main(["bundle", "-o", str(tmp_path / "b")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_an_unknown_extra_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"--extras gpu,cuda: cuda is not an extra.*gpu, math"):
        parse_extras("gpu,cuda", ["gpu", "math"])
    assert parse_extras(" gpu, flash ,", ["flash", "gpu"]) == ["flash", "gpu"]


def test_manylinux_platform_takes_every_older_glibc_as_pip_on_the_node_would():
    plats = make_target("3.12", "manylinux_2_28_x86_64").platforms()
    assert plats[0] == "manylinux_2_28_x86_64"
    # the legacy aliases stand where their glibc does
    for alias, glibc in [("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)]:
        assert plats.index(f"{alias}_x86_64") == plats.index(f"manylinux_2_{glibc}_x86_64") + 1
    assert "manylinux_2_29_x86_64" not in plats
    assert plats[-1] == "linux_x86_64"  # wheels built on such a machine
    # no manylinux2010/manylinux1 for aarch64; legacy names expand like the new ones
    assert make_target("3.12", "manylinux2014_aarch64").platforms() == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
        "linux_aarch64",
    ]


def test_pip_args_name_the_target_not_this_interpreter():
    args = make_target("3.12", "manylinux_2_17_x86_64").pip_args()
    assert args[:7] == [
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
    ]
    assert args[7:9] == ["--platform", "manylinux_2_17_x86_64"]


def test_markers_are_evaluated_for_the_target():
    env = Target((3, 12, None), "manylinux_2_39_aarch64").marker_env()
    assert Marker('python_version > "3.11"').evaluate(env)
    assert not Marker('python_version < "3.12"').evaluate(env)
    assert Marker('platform_machine == "aarch64" and sys_platform == "linux"').evaluate(env)


def test_the_defaults_are_this_machine():
    here = this_machine()
    assert make_target(None, None) == here
    assert make_target("3.12", None).platform == here.platform
    assert not here.platform.startswith("linux_")  # the manylinux tag, when there is one


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--python", "3.9"], "error: --python 3.9: hpc-ppo needs Python >=3.10; give the node's"),
        (
            ["--extras", "gpu,cuda"],
            "error: --extras gpu,cuda: cuda is not an extra of hpc-ppo; choose from flash, gpu,",
        ),
    ],
)
def test_flags_checked_against_hpc_ppos_own_wheel_leave_no_folder(tmp_path, capsys, flags, message):
    assert main(["bundle", "-o", str(tmp_path / "b"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its .partial
