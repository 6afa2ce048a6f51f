"""Tests for hpc_ppo/bundle/pack.py and the install.sh it writes: sums checked before anything
is installed, split parts that rejoin to the same sums, the interpreter and the skipped
packages checked. install.sh runs for real (with --target, so this venv stays as it is).

Run: python -m pytest tests/bundle/test_pack.py -q
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from hpc_ppo.bundle import pack

BIG = os.urandom(2_500_000)  # incompressible: a 1 MB split makes 3 parts


def sums(text: str) -> dict[str, str]:
    return {name: digest for digest, name in (line.split("  ") for line in text.splitlines())}


def test_a_bundle_installs_with_target(bundle_of, install_sh, tmp_path):
    folder = bundle_of({"alpha": b"a", "beta": b"b"})
    assert sorted(sums((folder / "SHA256SUMS").read_text())) == [
        "wheels/alpha-1.0-py3-none-any.whl",
        "wheels/beta-1.0-py3-none-any.whl",
    ]
    site = tmp_path / "site"
    proc = install_sh(folder, "--target", str(site))
    assert proc.returncode == 0, proc.stderr
    assert (site / "alpha_mod" / "__init__.py").is_file() and (site / "beta_mod").is_dir()
    assert "installed the 2 wheels" in proc.stdout


def test_a_damaged_wheel_stops_install_sh_before_anything_is_installed(
    bundle_of, install_sh, tmp_path
):
    folder = bundle_of({"alpha": b"a", "beta": b"b"})
    damaged = folder / "wheels" / "beta-1.0-py3-none-any.whl"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped in transfer
    damaged.write_bytes(bytes(data))
    site = tmp_path / "site"
    proc = install_sh(folder, "--target", str(site))
    assert proc.returncode == 1
    assert "wheels/beta-1.0-py3-none-any.whl: FAILED" in proc.stderr
    assert "do not match SHA256SUMS" in proc.stderr and "nothing was installed" in proc.stderr
    assert not site.exists()


def test_split_parts_rejoin_to_the_same_sums_and_install(bundle_of, install_sh, tmp_path):
    folder = bundle_of({"alpha": BIG, "beta": b"b"})
    before = (folder / "SHA256SUMS").read_text()
    parts = pack.split_wheels(folder, mb=1)
    assert [p.name for p in parts] == [f"wheels.tar.part-00{i}" for i in range(len(parts))]
    assert len(parts) == 3 and all(p.stat().st_size <= pack.MB for p in parts)
    assert not (folder / "wheels").exists()
    assert sorted(sums((folder / "parts.sha256").read_text())) == [p.name for p in parts]
    # joined by hand, as the README says: cat the parts, untar
    joined = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        got = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar}
    assert got == sums(before)
    # and by install.sh
    proc = install_sh(folder, "--target", str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "alpha_mod" / "blob.bin").read_bytes() == BIG


def test_a_damaged_part_is_named_and_nothing_is_joined(bundle_of, install_sh, tmp_path):
    folder = bundle_of({"alpha": BIG})
    parts = pack.split_wheels(folder, mb=1)
    parts[1].write_bytes(parts[1].read_bytes()[:-10])
    proc = install_sh(folder, "--target", str(tmp_path / "site"))
    assert proc.returncode == 1
    assert "wheels.tar.part-001: FAILED" in proc.stderr and "copy it again" in proc.stderr
    assert not (folder / "wheels").exists() and not (tmp_path / "site").exists()


def test_another_python_is_refused_with_the_fix(bundle_of, install_sh, tmp_path):
    folder = bundle_of({"alpha": b"a"}, python="3.99")
    proc = install_sh(folder, "--target", str(tmp_path / "site"))
    assert proc.returncode == 1
    assert "this bundle is for Python 3.99: run PYTHON=/path/to/python3.99" in proc.stderr
    assert not (tmp_path / "site").exists()


def test_skipped_packages_are_checked_in_the_target_interpreter(bundle_of, install_sh, tmp_path):
    from importlib.metadata import version

    pip_version = version("pip")
    folder = bundle_of({"alpha": b"a"}, skipped=("pip==0.0.1", "not-installed-here==1.0"))
    proc = install_sh(folder, "--target", str(tmp_path / "site"))
    assert proc.returncode == 1
    assert f"has pip {pip_version}, this bundle was made for pip==0.0.1" in proc.stderr
    assert f"or make the bundle with --skip pip=={pip_version}" in proc.stderr
    assert "warning: not-installed-here is not installed" in proc.stderr
    assert not (tmp_path / "site").exists()

    (tmp_path / "bundle").rename(tmp_path / "old")
    folder = bundle_of({"alpha": b"a"}, skipped=(f"pip=={pip_version}",))
    proc = install_sh(folder, "--target", str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning") == 0


def test_the_lock_is_sorted_pins_after_its_header(tmp_path):
    pack.write_lock(tmp_path, ["python: 3.12", "skipped: torch==2.11.0"], ["b==2", "A==1"])
    assert (tmp_path / "lock.txt").read_text() == (
        "# python: 3.12\n# skipped: torch==2.11.0\nA==1\nb==2\n"
    )
