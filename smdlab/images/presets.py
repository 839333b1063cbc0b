"""Named configurations of the image comparison (``--preset``): instances of
:class:`~smdlab.images.config.ImagesConfig`.  Times are this 2-core CPU machine's unless marked.

CPU presets:
  * ``default``: digits 8 x 8 (inside scikit-learn): the comparison that ``python -m
    smdlab.images`` runs (2 worker processes, 12 models: the four models on both protocols
    with seed 0, and the headline pair, DDPM and SMD-energy on the short chain, again with
    seeds 1 and 2; 2,000 steps of 48 images each, chosen by benchmarks/bench_image_recipes.py;
    fused AdamW); its measured wall time is in the README;
  * ``smoke``: the same pipeline in well under 2 minutes (tests run it; no verdicts);
  * ``tiny``: the smallest end-to-end run on any dataset (tests run it on real Fashion-MNIST
    and run the GPU script with it);
  * ``cpu-fashion``: full 28 x 28 Fashion-MNIST (IDX files under --data-root) sized to leave
    running on a CPU (a width-16 U-Net, 6,000 steps per model; the README gives its time
    extrapolated from measured step times, benchmarks/bench_gpu_sizing.py --cpu-batch 0).
GPU presets (for users with a GPU and the data):
  * ``mnist`` / ``fashion-mnist``: 28 x 28, 20,000 steps per model at width 64;
  * ``gpu-fashion``: a Fashion-MNIST comparison sized for one call of at most 10 minutes on one
    H200 (scripts/gpu_images.sh; 4 worker processes share the GPU, channels-last, bf16
    autocast, 5,000 samples per evaluation; FLOP estimate: benchmarks/bench_gpu_sizing.py);
  * ``cifar10``: 32 x 32, the published configuration (width 128, multipliers 1,2,2,2, attention
    at 16, dropout 0.1, latent 100 per pixel, 2 hypernetwork layers, generator width 1/4,
    T = 1000, 800k steps at batch 128 in the paper's setting; scale train.steps to your budget).
"""

from __future__ import annotations

from .config import (
    ChainsConfig,
    DataConfig,
    EvalConfig,
    ImagesConfig,
    ModelsConfig,
    NetConfig,
    image_train_config,
)


def _mnist_like(dataset: str) -> ImagesConfig:
    return ImagesConfig(
        preset=dataset, batch_size=128, short_train_steps=20000,
        data=DataConfig(dataset=dataset),
        net=NetConfig(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                     attn_resolutions=(7,), inner_dim=100),
        models=ModelsConfig(latent_dim=32),
        train=image_train_config(steps=20000, lr=2e-4, ema_decay=0.9995, warmup_steps=500,
                                 checkpoint_every=2000, log_every=100),
        eval=EvalConfig(n_samples=5000, sample_batch=1000, classifier_steps=3000, curve_n=500))


PRESETS: dict[str, ImagesConfig] = {
    "default": ImagesConfig(workers=2, seed_models=("ddpm", "smd-best"),
                            train=image_train_config(fused=True)),
    "smoke": ImagesConfig(
        preset="smoke", batch_size=32, short_train_steps=30, seed_repeats=(1,),
        net=NetConfig(base_channels=8, inner_dim=8), models=ModelsConfig(latent_dim=4),
        chains=ChainsConfig(short_chain=3, sample_steps=(10, 3), ddim_steps=(3,)),
        train=image_train_config(steps=30, checkpoint_every=15, log_every=3),
        eval=EvalConfig(n_samples=48, classifier_steps=60, n_grid=16, curve_n=24)),
    "tiny": ImagesConfig(
        preset="tiny", batch_size=8, short_train_steps=6, seed_repeats=(),
        data=DataConfig(image_size=8, n_train=200),
        net=NetConfig(base_channels=8, inner_dim=4), models=ModelsConfig(latent_dim=2),
        chains=ChainsConfig(short_chain=2, sample_steps=(4,), ddim_steps=(4,)),
        train=image_train_config(steps=6, checkpoint_every=3, log_every=1),
        eval=EvalConfig(n_samples=24, classifier_steps=10, n_grid=4, curve_n=8,
                        curve_points=3)),
    "mnist": _mnist_like("mnist"),
    "fashion-mnist": _mnist_like("fashion-mnist"),
    "gpu-fashion": ImagesConfig(
        preset="gpu-fashion", batch_size=256, short_train_steps=1500, workers=4,
        channels_last=True,
        data=DataConfig(dataset="fashion-mnist"),
        net=NetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                     attn_resolutions=(7,), inner_dim=100),
        models=ModelsConfig(latent_dim=16),
        chains=ChainsConfig(sample_steps=(1000, 100, 20, 10), ddim_steps=(100, 20, 10)),
        train=image_train_config(steps=1500, lr=1e-3, ema_decay=0.998, warmup_steps=100,
                                 lr_schedule="cosine", lr_final=0.02,
                                 checkpoint_every=500, log_every=50),
        eval=EvalConfig(n_samples=5000, sample_batch=2500, classifier_steps=1500, curve_n=500)),
    "cpu-fashion": ImagesConfig(
        preset="cpu-fashion", batch_size=64, short_train_steps=6000, workers=2,
        data=DataConfig(dataset="fashion-mnist"),
        net=NetConfig(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                     inner_dim=32),
        models=ModelsConfig(latent_dim=8),
        chains=ChainsConfig(sample_steps=(100, 20, 10), ddim_steps=(20, 10)),
        train=image_train_config(steps=6000, lr=2e-3, ema_decay=0.999, warmup_steps=200,
                                 lr_schedule="cosine", lr_final=0.02,
                                 checkpoint_every=1000, log_every=100),
        eval=EvalConfig(n_samples=1000, sample_batch=500, classifier_steps=1500, curve_n=250)),
    "cifar10": ImagesConfig(
        preset="cifar10", batch_size=128, short_train_steps=800_000,
        data=DataConfig(dataset="cifar10", flip=True),
        net=NetConfig(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                     attn_resolutions=(16,), dropout=0.1, inner_dim=100, hyper_layers=2),
        models=ModelsConfig(latent_dim=100, generator_fraction=0.25),
        train=image_train_config(steps=800_000, lr=2e-4, ema_decay=0.9999, warmup_steps=5000,
                                 grad_clip=1.0, checkpoint_every=10_000, log_every=500),
        eval=EvalConfig(n_samples=50_000, sample_batch=1000, classifier_steps=20_000,
                        curve_n=2000)),
}
