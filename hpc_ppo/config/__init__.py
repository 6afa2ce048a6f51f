"""One typed config tree for an hpc-ppo job: YAML file + dotted `key=value` overrides.

    hpc-ppo validate configs/tiny-cpu.yaml actor.lr=1e-4 rollout.n=8

schema.py   the dataclasses: every key, its default, bounds, choices and doc
load.py     YAML + overrides -> the tree (types checked); the tree -> YAML, flat params
validate.py every rule, for the launcher about to start the job (slurm_rules.py: slurm.*)
reference.py the README's table of keys (python -m hpc_ppo.config.reference); not imported
             here, so that command runs it once
"""

from hpc_ppo.config.load import (
    add_config_arguments,
    dump_yaml,
    flatten,
    load_config,
    save_config,
    to_dict,
)
from hpc_ppo.config.schema import (
    BUILTIN_TINY_MODEL,
    RESUMABLE_KEYS,
    AlgoConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    SlurmConfig,
    SyntheticDataConfig,
    TinyModelConfig,
    TrackingConfig,
    TrainerConfig,
)
from hpc_ppo.config.slurm_rules import parse_extra_option, time_seconds
from hpc_ppo.config.validate import (
    LAUNCHERS,
    Launcher,
    mini_batch_error,
    tp_error,
    validate,
    world_errors,
    world_size_for,
)

__all__ = [
    "BUILTIN_TINY_MODEL",
    "LAUNCHERS",
    "RESUMABLE_KEYS",
    "AlgoConfig",
    "Config",
    "DataConfig",
    "Launcher",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "SlurmConfig",
    "SyntheticDataConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainerConfig",
    "add_config_arguments",
    "dump_yaml",
    "flatten",
    "load_config",
    "mini_batch_error",
    "parse_extra_option",
    "save_config",
    "time_seconds",
    "to_dict",
    "tp_error",
    "validate",
    "world_errors",
    "world_size_for",
]
