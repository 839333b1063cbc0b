"""smdlab: exact-mathematics lab for the expressive bottleneck of diffusion models and for soft
mixture denoising (SMD).  See README.md for the public API."""

__version__ = "0.1.0"

from .adapters import diffusers_kernel, k_diffusion_kernel  # noqa: E402
from .denoisers import GaussianDenoiser, SMDDenoiser  # noqa: E402
from .distributions import Gaussian, LatentMixture  # noqa: E402
from .exact import (  # noqa: E402
    BEST_GAUSSIAN_KINDS,
    MixturePosterior,
    best_gaussian,
    expected_eps,
    expected_x0,
    marginal,
    mixture_score,
    posterior,
    score,
)
from .fit import fit as fit  # noqa: E402  (re-exported: smdlab.fit(target, kind=...))
from .kernels import (  # noqa: E402
    BestGaussianKernel,
    ExactKernel,
    MixtureConstructionKernel,
    ReverseKernel,
    SplicedKernel,
)
from .mixture import GaussianMixture  # noqa: E402
from .parameterization import posterior_coefficients, root_jump  # noqa: E402
from .sampling import (  # noqa: E402
    PointMass,
    StepInfo,
    ancestral_sample,
    chain_steps,
    ddim_sample,
    prior_sample,
)
from .schedules import NoiseSchedule  # noqa: E402

# The fitting call (``smdlab.fit``) is exported here by the training side of the package.

__all__ = [
    "BEST_GAUSSIAN_KINDS", "BestGaussianKernel", "ExactKernel", "Gaussian", "GaussianDenoiser",
    "GaussianMixture", "MixtureConstructionKernel", "SMDDenoiser", "diffusers_kernel",
    "k_diffusion_kernel",
    "LatentMixture", "MixturePosterior", "NoiseSchedule", "PointMass", "ReverseKernel", "StepInfo",
    "ancestral_sample", "best_gaussian", "chain_steps", "ddim_sample", "expected_eps",
    "expected_x0", "marginal", "mixture_score", "posterior", "posterior_coefficients",
    "prior_sample", "root_jump", "score", "SplicedKernel",
]
