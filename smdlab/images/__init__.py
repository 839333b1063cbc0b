"""DDPM against soft mixture denoising on real images (``python -m smdlab.images``).

The Gaussian and SMD kernels, objectives and training loop are the ones of the vector lab
(:mod:`smdlab.denoisers`, :mod:`smdlab.objectives`, :mod:`smdlab.training`); only the backbone
changes.  Modules, one concept each:

* :mod:`~smdlab.images.data`: readers without torchvision (digits, IDX, CIFAR-10 pickles, folders);
* :mod:`~smdlab.images.unet`: the DDPM U-Net with SMD's latent conditioning, the latent generator;
* :mod:`~smdlab.images.models`: DDPM / SMD / capacity-matched DDPM from one spec;
* :mod:`~smdlab.images.train`: batches, DDP-aware training, step timing;
* :mod:`~smdlab.images.distributed`: torchrun / DistributedDataParallel helpers;
* :mod:`~smdlab.images.sampling`: respaced ancestral and DDIM samplers, sample grids;
* :mod:`~smdlab.images.evaluation`: FD-<net>, KID, precision/recall, mode coverage, Inception FID;
* :mod:`~smdlab.images.experiment` and :mod:`~smdlab.images.presets`: the comparison and its report.
"""
