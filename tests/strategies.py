"""Hypothesis strategies for random valid mixtures, schedules and step pairs."""

import hypothesis.strategies as st
import torch

from smdlab import GaussianMixture, NoiseSchedule


@st.composite
def mixtures(draw, max_K=6, max_D=4, kinds=("full", "diagonal", "isotropic")):
    K = draw(st.integers(1, max_K))
    D = draw(st.integers(1, max_D))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, 3.0))
    min_var = draw(st.floats(1e-3, 0.3))
    return GaussianMixture.random(K, D, generator=g, scale=scale, min_var=min_var,
                                  max_var=min_var + draw(st.floats(0.0, 1.0)), kind=kind)


@st.composite
def schedules(draw):
    name = draw(st.sampled_from(["linear", "cosine", "sigmoid"]))
    T = draw(st.sampled_from([10, 50, 200, 1000]))
    return NoiseSchedule.from_name(name, T)


@st.composite
def step_pairs(draw, schedule, allow_zero=True):
    t = draw(st.integers(1, schedule.T))
    s = draw(st.integers(0 if allow_zero else 1, t - 1)) if t > 1 or allow_zero else 0
    return t, s
