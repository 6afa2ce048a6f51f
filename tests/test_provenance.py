"""A resumed run that executes other code than its first start says so."""

from __future__ import annotations

import logging

from hpc_ppo import provenance


def test_first_start_records_and_later_changes_warn(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+gaaaa")
    assert provenance.check_code_version(tmp_path) == "0.1.0+gaaaa"
    assert (tmp_path / "code_version").read_text().strip() == "0.1.0+gaaaa"
    with caplog.at_level(logging.WARNING):
        provenance.check_code_version(tmp_path)
    assert not caplog.records  # same code: silent
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+gbbbb.dirty")
    with caplog.at_level(logging.WARNING):
        provenance.check_code_version(tmp_path)
    assert "started with hpc-ppo 0.1.0+gaaaa and now runs 0.1.0+gbbbb.dirty" in caplog.text
    assert (tmp_path / "code_version").read_text().strip() == "0.1.0+gaaaa"  # the first stays


def test_code_version_of_this_checkout_names_the_commit():
    version = provenance.code_version()
    assert version.startswith("0.1.0") and ("+g" in version or version == "0.1.0")
