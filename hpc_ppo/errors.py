"""Error types shared across hpc-ppo, and how a command prints a bad config.

hpc-ppo validate configs/tiny-cpu.yaml rollout.n=0     # a ConfigError, one line, exit 2
"""

import sys


class ConfigError(ValueError):
    """A bad user input; the message names the key, the value and the fix."""


class UserCodeError(RuntimeError):
    """User code (a reward function) failed at run time. The message is the one line a user
    needs: the function, the exception and the item (a prompt excerpt)."""


class PeerFailed(RuntimeError):
    """Another rank failed with a reported error; this rank stops without a report of its own."""


class BundleError(RuntimeError):
    """`hpc-ppo bundle` could not make the bundle (no wheel for the target, a conflict, pip
    failed); the message names the requirement, the target and the fix, in one line."""


def print_config_errors(config: str, e: ConfigError, launcher: str | None) -> None:
    """A config's errors on stderr: a line naming the file (and the Slurm world when checked
    for it), then each error indented on its own line."""
    where = " for Slurm" if launcher == "slurm" else ""
    print(f"error: {config}: invalid configuration{where}", file=sys.stderr)
    for line in str(e).splitlines():
        print(f"  {line}", file=sys.stderr)
