"""The README's configuration table is the config tree's own reference, key for key."""

from pathlib import Path

from hpc_ppo.config.reference import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def test_readme_config_table_matches_the_config_tree():
    text = README.read_text()
    table = text[text.index(START) + len(START) : text.index(END)].strip()
    assert table == reference_markdown(), "regenerate with: python -m hpc_ppo.config.reference"
