"""The lab's experiments.  Importing this package registers every experiment in REGISTRY,
in the order the main job runs them."""

from .base import REGISTRY, Experiment, ExperimentResult, Outputs, Verdict, register, save_result

# Experiment modules register themselves on import; keep this list in run order.
# (E1-E5: the error lab; E6-E8: learned denoisers on the toy, sharing toy_config, toy_zoo and
# toy_eval; images: the image comparison.)

__all__ = ["REGISTRY", "Experiment", "ExperimentResult", "Outputs", "Verdict", "register",
           "save_result"]

from . import e1_posteriors  # noqa: E402, F401, I001  (registers e1)
from . import e2_bottleneck  # noqa: E402, F401, I001  (registers e2)
from . import e3_unbounded  # noqa: E402, F401, I001  (registers e3)
from . import e4_global  # noqa: E402, F401, I001  (registers e4)
from . import e5_smd_expressivity  # noqa: E402, F401, I001  (registers e5)
from . import e6_toy, e7_latent_use, e8_few_steps  # noqa: E402, F401  (E6-E8 register)
from . import e9_families  # noqa: E402, F401, I001  (registers e9)
from . import e10_mixture  # noqa: E402, F401, I001  (registers e10)
# The image comparison (run only when named, or by `python -m smdlab.images`).
from ..images import experiment as _images  # noqa: E402, F401, I001  (registers images)
