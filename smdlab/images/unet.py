"""A DDPM-style U-Net that accepts the soft-mixture-denoising latent; the image latent generator.

Backbone contract (shared with the vector MLP): ``net(x_t, t, z=None)`` with x_t (N, C, H, W), t the
ROOT step index (N,) and z an optional per-pixel latent (N, Z, H, W); it returns (N, C_out, H, W)
(the eps / x0 / v prediction, whichever the denoiser asks for).

Architecture (Ho et al. 2020, as in most public DDPM code): a 3x3 input conv; per resolution level
``num_res_blocks`` residual blocks (GroupNorm, SiLU, conv, time embedding added, dropout) with
optional self-attention at the chosen resolutions, then a strided-conv downsample; a middle block
(res, attention, res); a mirrored up path with skip connections and nearest-neighbour upsampling;
GroupNorm, SiLU and a 3x3 output conv.

SMD conditioning (the published placement): the latent z changes the computation twice, right
after the input conv and right before the output conv, through a module of
:mod:`smdlab.conditioning` (``"hyper"``: W = u u^T + softplus(c) I per pixel computed in O(d);
``"hyper_naive"``: the same with the matrices built, for the benchmark; ``"film"``: per-channel
scale and shift).  The latent generator for images, :class:`LatentGenerator`, is a small time-conditioned
U-Net on concat(x_t, eta) whose output is the per-pixel latent (the published form).
:class:`SharedLatentGenerator` is the cheap alternative: it reuses the U-Net's own stem (its input
conv features and time embedding, computed once for both) and adds one residual block on
stem + embed(eta), so the latent costs one full-resolution block instead of a second U-Net.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import conditioning as _cond
from ..nets import count_parameters, matched_width, timestep_embedding

CONDITIONINGS = ("none", *_cond.CONDITIONING_KINDS)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels`` (so any
    width works, which the capacity matching needs)."""
    g = max(d for d in range(1, min(max_groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv, residual (1x1 skip)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(N, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(N, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (one line each).

    in_channels: image channels C; out_channels: predicted channels (default C);
    image_size: H = W, needed to place attention by resolution; base_channels: width of level 0;
    channel_mults: width multiplier per level (one downsample between levels);
    num_res_blocks: residual blocks per level on the way down (one more on the way up);
    attn_resolutions: resolutions (pixels) with self-attention; heads: attention heads;
    dropout: dropout in residual blocks; time_dim: time-embedding width (default 4 * base);
    conditioning: how the latent z enters ("none", "hyper", "hyper_naive", "film");
    latent_dim: channels Z of the per-pixel latent; inner_dim: hypernetwork feature width (d);
    hyper_layers: number of W = u u^T + s I layers.
    """

    in_channels: int = 1
    out_channels: int | None = None
    image_size: int = 8
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    heads: int = 1
    dropout: float = 0.0
    time_dim: int | None = None
    conditioning: str = "none"
    latent_dim: int = 0
    inner_dim: int = 100
    hyper_layers: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; choose one of "
                             f"{CONDITIONINGS}")
        if self.conditioning != "none" and self.latent_dim < 1:
            raise ValueError(f"conditioning {self.conditioning!r} needs latent_dim >= 1")
        if self.base_channels < 1 or not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError("base_channels and every channel multiplier must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def make_conditioning(kind: str, channels: int, latent_dim: int, inner_dim: int = 100,
                      n_layers: int = 2) -> nn.Module:
    """The residual module of :mod:`smdlab.conditioning` for ``kind``: ``m(h, z)`` with h
    (N, C, H, W) and z (N, Z, H, W) returns h + (a z-dependent change)."""
    if kind == "film":
        return _cond.make_conditioning(kind, channels, latent_dim)
    return _cond.make_conditioning(kind, channels, latent_dim, inner_dim=inner_dim,
                                   n_layers=n_layers)


class UNet(nn.Module):
    """DDPM U-Net; see the module docstring.  ``UNet(UNetConfig(...))`` or ``UNet(**fields)``."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = replace(config, **kwargs) if config is not None else UNetConfig(**kwargs)
        self.config = cfg
        C, base = cfg.in_channels, cfg.base_channels
        t_dim = cfg.time_dim or 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(C, base, 3, padding=1)
        self.cond_in = self.cond_out = None
        if cfg.conditioning != "none":
            self.cond_in = make_conditioning(cfg.conditioning, base, cfg.latent_dim, cfg.inner_dim,
                                             cfg.hyper_layers)
            self.cond_out = make_conditioning(cfg.conditioning, base, cfg.latent_dim,
                                              cfg.inner_dim, cfg.hyper_layers)

        self.down = nn.ModuleList()
        chans, ch, res = [base], base, cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, base * mult, t_dim, cfg.dropout)]
                ch = base * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.heads))
                self.down.append(nn.ModuleList(blocks))
                chans.append(ch)
            if level != len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                chans.append(ch)
                res = (res + 1) // 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, t_dim, cfg.dropout), AttnBlock(ch, cfg.heads),
                                  ResBlock(ch, ch, t_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + chans.pop(), base * mult, t_dim, cfg.dropout)]
                ch = base * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.heads))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                res = res * 2
        self.norm_out = group_norm(ch)
        # Not zero-initialised (unlike DDPM): a zero output would hide the latent at initialisation.
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or C, 3, padding=1)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim if self.config.conditioning != "none" else 0

    def stem(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv_in(x), time embedding): the first features of :meth:`forward`, which a
        :class:`SharedLatentGenerator` reuses.  When the generator computed them for the same
        x and t objects, they are taken from its one-slot cache instead of recomputed."""
        cache, self._stem_cache = getattr(self, "_stem_cache", None), None
        if cache is not None and cache[0] is x and cache[1] is t:
            return cache[2], cache[3]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))
        return self.conv_in(x), temb

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                z: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) root step indices, z (N, Z, H, W) or None -> (N, C_out, H, W)."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape (N, C, H, W); got {tuple(x.shape)}")
        if (z is None) != (self.cond_in is None):
            raise ValueError("this U-Net " + ("needs a latent z" if z is None else
                                              "has no latent conditioning but was given z"))
        h, temb = self.stem(x, t)
        if self.cond_in is not None:
            h = self.cond_in(h, z)
        skips = [h]
        for blocks in self.down:
            for b in blocks:
                h = b(h, temb) if isinstance(b, ResBlock) else b(h)
            skips.append(h)
        for b in self.mid:
            h = b(h, temb) if isinstance(b, ResBlock) else b(h)
        for blocks in self.up:
            for b in blocks:
                if isinstance(b, ResBlock):
                    h = b(torch.cat([h, skips.pop()], 1), temb)
                elif isinstance(b, Upsample):
                    h = b(h, skips[-1].shape[-2:])
                else:
                    h = b(h)
        h = F.silu(self.norm_out(h))
        if self.cond_out is not None:
            h = self.cond_out(h, z)
        return self.conv_out(h)


class LatentGenerator(nn.Module):
    """z = g(x_t, eta, t): a small time-conditioned U-Net on concat(x_t, eta) -> (N, Z, H, W).

    eta has the image's shape (C, H, W) (as in the published code); ``width_fraction`` of the main
    U-Net's width (1/4 published), same multipliers, no attention, no conditioning.
    """

    def __init__(self, in_channels: int, latent_dim: int, image_size: int, base_channels: int = 8,
                 channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1):
        super().__init__()
        self.eta_shape = (in_channels, image_size, image_size)
        self.latent_dim = latent_dim
        self.net = UNet(UNetConfig(in_channels=2 * in_channels, out_channels=latent_dim,
                                   image_size=image_size, base_channels=base_channels,
                                   channel_mults=channel_mults, num_res_blocks=num_res_blocks))

    def forward(self, x_t: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, eta], 1), t)


class SharedLatentGenerator(nn.Module):
    """z = g(x_t, eta, t) built on the conditioned U-Net's own stem (the cheap generator).

    h0 = conv_in(x_t) and the time embedding are the U-Net's (shared weights, computed once: the
    U-Net's next :meth:`UNet.stem` call on the same x_t and t takes them from a one-slot cache);
    z = conv1x1(SiLU(GN(ResBlock(h0 + conv_eta(eta), temb)))), ``width`` channels inside.  The
    latent still depends on x_t, t and eta, so the SMD kernel contract is unchanged.  The U-Net
    is held by reference, not registered: its parameters (and state-dict keys) stay the U-Net's.
    """

    def __init__(self, unet: UNet, latent_dim: int, width: int = 8):
        super().__init__()
        cfg = unet.config
        if unet.cond_in is None:
            raise ValueError("a shared latent generator needs a latent-conditioned U-Net")
        self._trunk = (unet,)           # a tuple, so nn.Module does not register it
        self.eta_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        self.latent_dim = latent_dim
        t_dim = cfg.time_dim or 4 * cfg.base_channels
        self.eta_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.block = ResBlock(cfg.base_channels, width, t_dim)
        self.norm = group_norm(width)
        self.out = nn.Conv2d(width, latent_dim, 1)   # 1x1: Z outputs per pixel stay cheap

    @property
    def unet(self) -> UNet:
        return self._trunk[0]

    def forward(self, x_t: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        h0, temb = unet.stem(x_t, t)
        unet._stem_cache = (x_t, t, h0, temb)       # the U-Net's stem call reuses these
        h = self.block(h0 + self.eta_in(eta.to(h0.dtype)), temb)
        return self.out(F.silu(self.norm(h)))


def capacity_matched_config(target_params: int, config: UNetConfig,
                            tolerance: float = 0.05) -> UNetConfig:
    """A plain (unconditioned) U-Net config like ``config`` whose parameter count is closest to
    ``target_params``, found by searching the base width and then the time-embedding width;
    raises ValueError if none is within ``tolerance``."""
    plain = replace(config, conditioning="none", latent_dim=0, time_dim=None)
    base = matched_width(target_params, lambda w: UNet(replace(plain, base_channels=w)), lo=1,
                         hi=max(8, 8 * config.base_channels))
    best = replace(plain, base_channels=base)
    best_err = abs(count_parameters(UNet(best)) - target_params) / target_params
    # Fine tuning: the time-embedding width moves the count in small steps.
    t0 = 4 * best.base_channels
    for t_dim in range(max(8, t0 // 2), 2 * t0 + 1, 2):
        cand = replace(best, time_dim=t_dim)
        err = abs(count_parameters(UNet(cand)) - target_params) / target_params
        if err < best_err:
            best, best_err = cand, err
    if best_err > tolerance:
        raise ValueError(f"no plain U-Net within {tolerance:.0%} of {target_params} parameters "
                         f"(closest {best_err:.1%})")
    return best
