"""Named configurations of the image comparison (``--preset``).

CPU presets (digits 8 x 8, scikit-learn's, no download):
  * ``default``: the comparison that ``python -m smdlab.images`` runs, at most ~15 min on 2 cores;
  * ``smoke``: the same pipeline in well under 2 minutes (tests run it);
  * ``tiny``: the smallest end-to-end run on any dataset (tests run the GPU script with it).
GPU presets (documented for users with a GPU and the data; see README-images in REPORT-images.md):
  * ``mnist`` / ``fashion-mnist``: 28 x 28, IDX files under --data-root;
  * ``gpu-fashion``: a Fashion-MNIST comparison sized for ~10 minutes on one H200
    (scripts/gpu_images.sh);
  * ``cifar10``: 32 x 32, the published configuration (width 128, multipliers 1,2,2,2, attention
    at 16, dropout 0.1, latent 100 per pixel, 2 hypernetwork layers, generator width 1/4,
    T = 1000, 800k steps at batch 128 in the paper's setting; scale train_steps to your budget).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "default": {},
    "smoke": dict(train_steps=30, short_train_steps=30, base_channels=8, latent_dim=4,
                  inner_dim=8, n_samples=48, sample_steps=(10, 3), ddim_steps=(3,),
                  short_chain=3, classifier_steps=60, batch_size=32, checkpoint_every=15,
                  n_grid=16, seed_repeats=(1,)),
    "tiny": dict(train_steps=6, short_train_steps=6, base_channels=8, latent_dim=2, inner_dim=4,
                 n_samples=24, sample_steps=(4,), ddim_steps=(4,), short_chain=2,
                 classifier_steps=10, batch_size=8, checkpoint_every=3, n_grid=4,
                 image_size=8, n_train=200, seed_repeats=()),
    "mnist": dict(dataset="mnist", base_channels=64, channel_mults=(1, 2, 2),
                  num_res_blocks=2, attn_resolutions=(7,), latent_dim=32, inner_dim=100,
                  train_steps=20000, short_train_steps=20000, batch_size=128, lr=2e-4,
                  ema_decay=0.9995, warmup_steps=500, n_samples=5000, sample_batch=1000,
                  classifier_steps=3000, checkpoint_every=2000),
    "fashion-mnist": dict(dataset="fashion-mnist", base_channels=64, channel_mults=(1, 2, 2),
                          num_res_blocks=2, attn_resolutions=(7,), latent_dim=32,
                          inner_dim=100, train_steps=20000, short_train_steps=20000,
                          batch_size=128, lr=2e-4, ema_decay=0.9995, warmup_steps=500,
                          n_samples=5000, sample_batch=1000, classifier_steps=3000,
                          checkpoint_every=2000),
    "gpu-fashion": dict(dataset="fashion-mnist", base_channels=32, channel_mults=(1, 2, 2),
                        num_res_blocks=1, attn_resolutions=(7,), latent_dim=16, inner_dim=100,
                        train_steps=1500, short_train_steps=1500, batch_size=256, lr=1e-3,
                        ema_decay=0.998, warmup_steps=100, n_samples=2000, sample_batch=1000,
                        classifier_steps=1500, checkpoint_every=500,
                        sample_steps=(1000, 100, 50, 20, 10), ddim_steps=(100, 50, 20, 10)),
    "cifar10": dict(dataset="cifar10", base_channels=128, channel_mults=(1, 2, 2, 2),
                    num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, latent_dim=100,
                    inner_dim=100, hyper_layers=2, generator_fraction=0.25, flip=True,
                    train_steps=800_000, short_train_steps=800_000, batch_size=128, lr=2e-4,
                    ema_decay=0.9999, warmup_steps=5000, grad_clip=1.0, n_samples=50_000,
                    sample_batch=1000, classifier_steps=20_000, checkpoint_every=10_000),
}
