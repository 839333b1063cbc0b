"""Diagnostics of learned reverse kernels against the exact posterior of a mixture target.

:func:`latent_spread` asks whether a latent kernel (SMD) uses its latent: at fixed x_t ~ q(x_t), the
RMS spread over eta of the predicted step mean, sqrt(E_x E_eta ||mu(x_t, z(eta)) - E_eta mu||^2),
beside the spread of the true posterior's component means, sqrt(E_x sum_k r_k ||mean_k - mean||^2).
A kernel that ignores its latent has spread 0; the exact kernel's mixture structure has the true
spread.  (For image models without a tractable posterior see
:func:`smdlab.images.models.latent_spread`.)
"""

from __future__ import annotations

import torch

from .exact import marginal, posterior


def latent_spread(kernel, mix, root, t: int, s: int, n_points: int, n_eta: int,
                  generator: torch.Generator) -> tuple[float, float]:
    """(learned spread, true spread) at the root jump t -> s, RMS over n_points x_t ~ q(x_t)
    with n_eta latent draws each (``kernel.distribution(..., n_latent=n_eta).means``:
    (n_points, n_eta, D))."""
    x_t = marginal(mix, root, t).sample(n_points, generator)
    means = kernel.distribution(x_t, t, s, generator=generator, n_latent=n_eta).means
    learned = (means - means.mean(1, keepdim=True)).square().sum(-1).mean().sqrt().item()
    post = posterior(mix, root, x_t, t, s)
    dev = post.means - post.mean()[:, None, :]
    true = (post.weights * dev.square().sum(-1)).sum(-1).mean().sqrt().item()
    return learned, true
