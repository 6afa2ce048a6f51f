"""Error types shared across hpc-ppo."""


class ConfigError(ValueError):
    """A bad user input; the message names the key, the value and the fix."""
