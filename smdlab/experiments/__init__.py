"""The lab's experiments.  Importing this package registers every experiment in REGISTRY,
in the order the main job runs them."""

from .base import REGISTRY, Experiment, ExperimentResult, Outputs, Verdict, register, save_result

# Experiment modules register themselves on import; keep this list in run order.
# (E1-E5: the error lab; E6-E8: learned denoisers.)

__all__ = ["REGISTRY", "Experiment", "ExperimentResult", "Outputs", "Verdict", "register",
           "save_result"]

from . import e6_toy, e7_latent_use, e8_few_steps  # noqa: E402, F401  (E6-E8 register)
