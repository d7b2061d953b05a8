"""`lifelong run` as a library call: `RunConfig` (the settings) and `run_experiment` (the run)."""

from lifelong.experiment.run import run_experiment
from lifelong.experiment.settings import RunConfig, load_yaml_config, make_config

__all__ = ["RunConfig", "load_yaml_config", "make_config", "run_experiment"]
