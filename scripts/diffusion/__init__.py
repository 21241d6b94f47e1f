"""Network-agnostic diffusion core of MedSyn (docs/training.md).

- :mod:`.schedule`: continuous-time ``alpha_bar(t)`` schedules (cosine), a registry of them.
- :mod:`.scheduler`: :class:`ContinuousDDIMScheduler`, the noise-process maths (``add_noise``, ``set_timesteps``,
  ``step``) in MONAI's scheduler interface.
- :mod:`.denoisers`: ``denoise(x_t, timesteps) -> x̂0`` wrappers: network + text, classifier-free guidance,
  fixed channels, super-resolution condition.
- :mod:`.sampler`: the one DDIM loop over a denoiser.
- :mod:`.conditioning`: nearest ×4 resampling and the super-resolution training condition.
- :mod:`.prepare_batch`: prepare-batch callables for MONAI's ``SupervisedTrainer``.
- :mod:`.losses`: the x0 MSE, optionally over the channels a sample has (text-only data).

Training (either stage): ``SupervisedTrainer(..., network=net, loss_function=torch.nn.MSELoss(),
prepare_batch=LowResPrepareBatch())`` (or ``SuperResolutionPrepareBatch()``); the default ``SimpleInferer`` then
calls ``net(x_t, timesteps, context=..., drop_context=...)`` and the loss compares x̂0 with x0.

Inference::

    lowres = sample_ddim(ClassifierFreeGuidance(lowres_net, tokens, guidance_scale=1.0), (B, 4, 64, 64, 64), 50,
                         generator=seed)
    highres = sample_ddim(SuperResolutionDenoiser(sr_net, upsample_nearest(lowres)), (B, 4, 256, 256, 256), 20,
                          generator=seed)

Segmentation or anatomy control: wrap the low-res denoiser in ``FixedChannels(denoiser, values, channels)``.
"""

from .conditioning import degrade_for_super_resolution, downsample_nearest, upsample_nearest
from .denoisers import (
    PRECISIONS,
    AutocastDenoiser,
    ClassifierFreeGuidance,
    Denoiser,
    FixedChannels,
    NetworkDenoiser,
    SuperResolutionDenoiser,
    channel_indices,
)
from .losses import MaskedMSELoss
from .prepare_batch import ContinuousDiffusionPrepareBatch, LowResPrepareBatch, SuperResolutionPrepareBatch
from .rng import as_generator
from .sampler import SamplerStep, ddim_sample_loop, sample_ddim
from .schedule import TIME_SCALE, ContinuousSchedules, cosine_alpha_bar, get_schedule
from .scheduler import (
    SCHEDULERS,
    ContinuousDDIMScheduler,
    ContinuousDPMSolverScheduler,
    DDIMStepOutput,
    get_scheduler,
)
