"""Networks for vector data: a time embedding, a time-conditioned residual MLP backbone that accepts
a latent, and SMD's latent generator for vectors.

Networks know nothing of schedules: they are called as ``net(x_t, t, z=None)`` with x_t (N, D) and
t the *root* step index (N,) (an integer tensor), and return (N, D) (what the parameterisation of
the denoiser around them says: eps, x0 or v).  The latent generator is ``gen(x_t, eta, t) -> z``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from . import parameterization as P
from .conditioning import make_conditioning


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) step indices t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t rescaled to 0..1000 (whatever T is), then a 2-layer MLP.

    Args:
        dim: output width; T: the root chain length (t / T * 1000 is embedded, so a 10-step and a
        1000-step chain see the same frequencies at the same noise level).
    """

    def __init__(self, dim: int, T: int = 1000):
        super().__init__()
        self.dim, self.T = dim, T
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The MLP runs once per distinct step (a sampling step has one, a 4-step chain's batch
        # four): the same values as row by row, at a fraction of the cost on small networks.
        u, inv = torch.unique(t, return_inverse=True)
        emb = timestep_embedding(u.float() * (1000.0 / self.T), self.dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))[inv]  # float64 nets: float64 input


class FourierFeatures(nn.Module):
    """Fixed Fourier features of the input coordinates: x (N, D) -> [x, sin(pi f x), cos(pi f x)]
    (N, D (1 + 2 n)) with frequencies f = scale * 2^k, k = 0..n-1, for every coordinate.

    Why: an MLP on raw coordinates is biased toward smooth functions of x (spectral bias); the
    posterior mean of a narrow-mode mixture at small noise is a staircase in x whose steps are
    one mode spacing wide.  Features at the spacing's frequency let the network draw it (the
    probe of issue 10: in-mode share 0.44 -> 0.94 with the t-sampling below, see
    :mod:`smdlab.objectives`).  Deterministic frequencies: nothing random to seed or store.
    """

    def __init__(self, dim: int, n_freq: int, scale: float = 1.0):
        super().__init__()
        if n_freq < 1 or scale <= 0:
            raise ValueError(f"FourierFeatures needs n_freq >= 1 and scale > 0; got {n_freq}, "
                             f"{scale}")
        self.dim, self.n_freq = dim, n_freq
        self.register_buffer("freqs", math.pi * scale * 2.0 ** torch.arange(n_freq,
                                                                            dtype=torch.float32))

    @property
    def out_dim(self) -> int:
        return self.dim * (1 + 2 * self.n_freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (x[:, :, None] * self.freqs.to(x.dtype)).flatten(1)         # (N, D n)
        return torch.cat([x, torch.sin(a), torch.cos(a)], -1)


class _ResBlock(nn.Module):
    def __init__(self, hidden: int, time_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(time_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h, e):
        return h + self.lin2(self.act(self.lin1(self.act(h)) + self.temb(e)))


class VectorMLP(nn.Module):
    """Time-conditioned residual MLP for (N, D) data, optionally conditioned on a latent z.

    Layout (as in the authors' U-Net, the latent enters after the first layer and before the last):
    in-proj -> [conditioning(h, z)] -> depth residual blocks (time added in each) ->
    [conditioning(h, z)] -> SiLU -> out-proj.

    Args:
        dim: data dimension D.
        hidden: width.
        depth: number of residual blocks (two linear layers each).
        time_dim: width of the time embedding.
        T: root chain length (for the time embedding's scale).
        latent_dim: Z (0: no latent, a plain DDPM backbone).
        conditioning: ``"hyper"``, ``"hyper_naive"`` or ``"film"`` (see :mod:`smdlab.conditioning`).
        inner_dim, n_layers: the hypernetwork's width and number of W_l.
        fourier, fourier_scale: number of :class:`FourierFeatures` frequencies per input
            coordinate (0: the raw coordinates only) and the lowest frequency's scale.
        out_dim: width of the output (None: dim; a mixture head needs more).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 2, time_dim: int = 64,
                 T: int = 1000, latent_dim: int = 0, conditioning: str = "hyper",
                 inner_dim: int = 32, n_layers: int = 2, fourier: int = 0,
                 fourier_scale: float = 1.0, out_dim: int | None = None):
        super().__init__()
        if min(dim, hidden, depth, time_dim, T) < 1 or latent_dim < 0:
            raise ValueError("VectorMLP needs positive dim, hidden, depth, time_dim, T and "
                             f"latent_dim >= 0; got {dim}, {hidden}, {depth}, {time_dim}, {T}, "
                             f"{latent_dim}")
        if fourier < 0:
            raise ValueError(f"fourier (frequencies per coordinate) must be >= 0; got {fourier}")
        if out_dim is not None and out_dim < 1:
            raise ValueError(f"out_dim must be >= 1 (None: dim); got {out_dim}")
        self.dim, self.latent_dim = dim, latent_dim
        self.time = TimeEmbedding(time_dim, T)
        self.features = FourierFeatures(dim, fourier, fourier_scale) if fourier else None
        self.inp = nn.Linear(self.features.out_dim if fourier else dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, time_dim) for _ in range(depth))
        self.out = nn.Linear(hidden, dim if out_dim is None else out_dim)
        self.act = nn.SiLU()
        if latent_dim:
            kw = {} if conditioning == "film" else {"inner_dim": inner_dim, "n_layers": n_layers}
            self.cond_in = make_conditioning(conditioning, hidden, latent_dim, **kw)
            self.cond_out = make_conditioning(conditioning, hidden, latent_dim, **kw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (N, {self.dim}); got {tuple(x.shape)}")
        if (z is not None) != bool(self.latent_dim):
            raise ValueError("this network takes a latent z" if self.latent_dim
                             else "this network has no latent input (z must be None)")
        e = self.time(t)
        h = self.inp(self.features(x) if self.features is not None else x)
        if z is not None:
            h = self.cond_in(h, z)
        for blk in self.blocks:
            h = blk(h, e)
        if z is not None:
            h = self.cond_out(h, z)
        return self.out(self.act(h))


class VectorLatentGenerator(nn.Module):
    """SMD's latent generator for vectors: z = g(x_t, eta, t), an MLP on [x_t, eta, emb(t)].

    Args:
        dim: data dimension D; noise_dim: dimension of eta ~ N(0, I); latent_dim: Z;
        hidden, depth: the MLP's width and number of hidden layers; time_dim, T: time embedding.
    """

    def __init__(self, dim: int, noise_dim: int, latent_dim: int, hidden: int = 64,
                 depth: int = 2, time_dim: int = 32, T: int = 1000):
        super().__init__()
        if min(dim, noise_dim, latent_dim, hidden, depth) < 1:
            raise ValueError("VectorLatentGenerator needs positive sizes")
        self.dim, self.noise_dim, self.latent_dim = dim, noise_dim, latent_dim
        self.time = TimeEmbedding(time_dim, T)
        layers: list[nn.Module] = [nn.Linear(dim + noise_dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, latent_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if eta.shape != (x_t.shape[0], self.noise_dim):
            raise ValueError(f"eta must be (N, {self.noise_dim}); got {tuple(eta.shape)}")
        return self.mlp(torch.cat([x_t, eta.to(x_t.dtype), self.time(t)], -1))


class CodebookLatentGenerator(nn.Module):
    """A discrete latent for SMD: z = E[k] with k = floor(K Phi(eta_1)) uniform on K learned codes.

    The code does not depend on x_t or t, so p(z | x_t) is uniform over the codebook and the
    kernel is an equal-weight mixture of K Gaussians whose means mu(x_t, E[k]) move freely, one
    per code: unlike a smooth map of Gaussian noise, it can put its predictions on separate
    points (posterior weights are represented by how many codes share a mode, in steps of 1/K).
    A deterministic function of eta ~ N(0, I) like every generator, so SMD's samplers, objectives
    and error routes take it unchanged.

    Args:
        noise_dim: dimension of eta (only its first coordinate is used); latent_dim: Z;
        n_codes: K.
    """

    def __init__(self, noise_dim: int, latent_dim: int, n_codes: int = 64):
        super().__init__()
        if min(noise_dim, latent_dim, n_codes) < 1:
            raise ValueError("CodebookLatentGenerator needs positive sizes")
        self.noise_dim, self.latent_dim, self.n_codes = noise_dim, latent_dim, n_codes
        self.codes = nn.Embedding(n_codes, latent_dim)
        nn.init.normal_(self.codes.weight, std=1.0)

    def code_index(self, eta: torch.Tensor) -> torch.Tensor:
        """k = floor(K Phi(eta_1)), in 0..K-1 (uniform when eta_1 ~ N(0, 1))."""
        u = torch.special.ndtr(eta[:, 0].double())
        return (u * self.n_codes).long().clamp_(0, self.n_codes - 1)

    def forward(self, x_t: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if eta.shape != (x_t.shape[0], self.noise_dim):
            raise ValueError(f"eta must be (N, {self.noise_dim}); got {tuple(eta.shape)}")
        return self.codes(self.code_index(eta)).to(x_t.dtype)


def count_parameters(*modules: nn.Module) -> int:
    """Total number of parameters of the given modules."""
    return sum(p.numel() for m in modules for p in m.parameters())


def matched_width(target: int, build: Callable[[int], nn.Module | tuple], lo: int = 4,
                  hi: int = 4096) -> int:
    """The width w whose ``build(w)`` has the parameter count closest to ``target``.

    ``build`` may return a module or a tuple of modules; the count must grow with w (bisection).
    """
    def n(w):
        m = build(w)
        return count_parameters(*(m if isinstance(m, tuple) else (m,)))
    if n(hi) < target:
        raise ValueError(f"even width {hi} has fewer than {target} parameters")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if n(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(n(w) - target))


class OracleNet(nn.Module):
    """The perfect network of a Gaussian-mixture target: it outputs the exact regression target
    E[eps | x_t], E[x_0 | x_t] or E[v | x_t] (per ``parameterization``).  Wrapped in a
    :class:`smdlab.denoisers.GaussianDenoiser` it is the best DDPM with that kernel's variances
    (the oracle DDPM, the floor of any learned DDPM); float64 throughout.

    Args:
        mixture: the target; schedule: the root schedule (t are its steps);
        parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
    """

    def __init__(self, mixture, schedule, parameterization: str = "eps"):
        super().__init__()
        if parameterization not in P.PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of "
                             f"{P.PARAMETERIZATIONS}")
        self.mixture, self.schedule, self.parameterization = mixture, schedule.root, parameterization
        self.register_buffer("_dtype_anchor", torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z=None) -> torch.Tensor:
        from .exact import expected_x0

        x = x.to(torch.float64)
        out = torch.empty_like(x)
        for tt in torch.unique(t).tolist():
            sel = t == tt
            x0 = expected_x0(self.mixture, self.schedule, x[sel], int(tt))
            la = self.schedule.log_alpha_bars[int(tt)].item()
            out[sel] = P.target(self.parameterization, x0, P.eps_from_x0(x[sel], x0, la), la)
        return out
