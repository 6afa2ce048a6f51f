"""python -m hpc_ppo.config: print the README's configuration table (see reference.py)."""

from hpc_ppo.config.reference import reference_markdown

print(reference_markdown())
