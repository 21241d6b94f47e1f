"""A MONAI-style scheduler for MedSyn's continuous-time, x0-predicting diffusion (docs/training.md).

It knows the maths of the noise process and nothing about the network (as diffusers and MONAI schedulers do):
``add_noise`` for training, ``set_timesteps`` + ``step`` for deterministic DDIM sampling. The interface follows
``monai.networks.schedulers.DDIMScheduler`` where it applies; the differences are:

- time is continuous: ``timesteps`` are floats in network units ``t * num_train_timesteps`` (t in [0, 1]), not
  integer indices into a table, and the inference grid includes both ends (1000 → 0);
- the network predicts x0 only (MONAI's ``prediction_type="sample"``), so ``step`` takes x̂0 as ``model_output``;
- the noise direction is derived from the *clipped* x̂0, as in the official MedSyn sampler (MONAI derives it from
  the unclipped prediction), so the two agree exactly only where clipping does not act;
- sampling is deterministic (MONAI's ``eta=0``): there is no ``eta`` and no generator in ``step``;
- ``step`` accepts the next timestep explicitly (like MONAI's ``RFlowScheduler``); left out, it is read off the
  grid made by ``set_timesteps``, so MONAI's ``DiffusionInferer.sample`` loop can drive it too;
- the grid is uniform in time (``timestep_spacing="uniform"``, the official loop's) or uniform in log-SNR
  (``"logsnr"``, the grid DPM-Solver was designed for: it spends the steps where the signal emerges, near t = 0);
- ``set_alpha_to_one=True`` (default, as in MONAI): the step landing on t = 0 returns x̂0 itself, so N steps are
  N network evaluations and the final sample is exactly the clipped prediction (which keeps fixed channels exact).
  ``False`` reproduces the official MedSyn sampler: the step to t = 0 uses ``alpha_bar(0)`` and the network is
  evaluated once more at t = 0, whose x̂0 is returned (N + 1 evaluations).

It is a plain object, not an ``nn.Module`` subclass of MONAI's ``Scheduler``: that base builds discrete beta tables
indexed by integer timesteps, which have no meaning here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from monai.utils import unsqueeze_right

from scripts.conventions import ModelConventions

from .schedule import get_schedule


class DDIMStepOutput(NamedTuple):
    """Result of one DDIM step; unpacks like MONAI's ``(pred_prev_sample, pred_original_sample)`` tuple.

    Attributes:
        prev_sample: x at the next (smaller) timestep, shape of the sample.
        pred_original_sample: the (clipped) x̂0 the step used, shape of the sample.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class ContinuousDDIMScheduler:
    """Deterministic DDIM on a continuous-time schedule for networks that predict x0.

    Args:
        num_train_timesteps: network units per unit of time: the network receives ``t * num_train_timesteps``;
            default 1000 (MedSyn).
        schedule: name of an ``alpha_bar(t)`` function in ``ContinuousSchedules``; default ``"cosine"``.
        clip_sample: clip x̂0 to ``[clip_sample_min, clip_sample_max]`` in every step; default True (MedSyn).
        clip_sample_min: lower clip value, default -1.
        clip_sample_max: upper clip value, default 1.
        set_alpha_to_one: the step to t = 0 returns x̂0 (True, default); False evaluates the network again at t = 0
            like the official MedSyn sampler (see the module docstring).
        timestep_spacing: ``"uniform"`` in time (DDIM's default, the official grid) or ``"logsnr"``, uniform in
            ``lambda = log(sqrt(alpha_bar / (1 - alpha_bar)))`` between its values at t = 1 and t = 0; default: the
            class's ``default_timestep_spacing``.
        schedule_args: keyword arguments passed to the schedule function (e.g. ``s`` of the cosine schedule).

    Example::

        scheduler = ContinuousDDIMScheduler()
        x_t = scheduler.add_noise(x0, noise, timesteps)           # training, timesteps = t * 1000, shape (B,)
        scheduler.set_timesteps(50)                                # sampling grid 1000, 980, ..., 0
        for t, t_next in zip(scheduler.timesteps, scheduler.next_timesteps):
            x, x0_hat = scheduler.step(denoise(x, t.expand(len(x))), t, x, t_next)
    """

    default_timestep_spacing = "uniform"
    display_name = "DDIM"  # progress bars and logs

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        clip_sample: bool = True,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        set_alpha_to_one: bool = True,
        timestep_spacing: str | None = None,
        **schedule_args,
    ) -> None:
        if num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        timestep_spacing = timestep_spacing or self.default_timestep_spacing
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {timestep_spacing!r}"
            )
        self.timestep_spacing = timestep_spacing
        if clip_sample and clip_sample_min >= clip_sample_max:
            raise ValueError(f"clip_sample_min must be below clip_sample_max, got {clip_sample_min}, {clip_sample_max}")
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self._alpha_bar_fn = get_schedule(schedule)
        self.schedule_args = schedule_args
        self.clip_sample = clip_sample
        self.clip_sample_values = (clip_sample_min, clip_sample_max)
        self.set_alpha_to_one = set_alpha_to_one
        # settable by set_timesteps
        self.num_inference_steps: int | None = None
        self.time_grid = torch.empty(0)
        self.timesteps = torch.empty(0)
        self.next_timesteps = torch.empty(0)

    @classmethod
    def for_conventions(cls, conventions: ModelConventions, **kwargs) -> ContinuousDDIMScheduler:
        """The scheduler that samples weights of these conventions as they were meant to be sampled: the official
        weights with the official loop's extra evaluation at t = 0 (``set_alpha_to_one=False``)."""
        return cls(set_alpha_to_one=not conventions.extra_final_evaluation, **kwargs)

    # --- schedule ----------------------------------------------------------------------------------------------

    def alpha_bar(self, timesteps: torch.Tensor | float) -> torch.Tensor:
        """``alpha_bar`` at ``timesteps`` given in network units (``t * num_train_timesteps``).

        Args:
            timesteps: float tensor of any shape, or a number.

        Returns:
            tensor of the shape of ``timesteps``, at least float32.
        """
        timesteps = torch.as_tensor(timesteps)
        dtype = torch.promote_types(timesteps.dtype, torch.float32)
        return self._alpha_bar_fn(timesteps.to(dtype) / self.num_train_timesteps, **self.schedule_args)

    @staticmethod
    def _per_sample(timesteps: torch.Tensor | float, sample: torch.Tensor) -> torch.Tensor:
        """``timesteps`` checked against ``sample``: a scalar, or one per batch item (B,)."""
        timesteps = torch.as_tensor(timesteps, device=sample.device)
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.numel() not in (1, sample.shape[0])):
            raise ValueError(
                f"timesteps must be a scalar or have shape (B,) with B={sample.shape[0]}, got {tuple(timesteps.shape)}"
            )
        return timesteps

    def _alpha_bar_like(self, timesteps: torch.Tensor | float, sample: torch.Tensor) -> torch.Tensor:
        """``alpha_bar`` broadcastable against ``sample``: a scalar, or (B,) reshaped to (B, 1, ..., 1)."""
        alpha_bar = self.alpha_bar(self._per_sample(timesteps, sample))
        return unsqueeze_right(alpha_bar, sample.ndim).to(sample.dtype)

    def _log_snr_like(self, timesteps: torch.Tensor | float, sample: torch.Tensor) -> torch.Tensor:
        """``log_snr`` broadcastable against ``sample``, float64."""
        return unsqueeze_right(self.log_snr(self._per_sample(timesteps, sample)), sample.ndim)

    def log_snr(self, timesteps: torch.Tensor | float) -> torch.Tensor:
        """``lambda = log(alpha / sigma) = 0.5 log(alpha_bar / (1 - alpha_bar))`` at network-unit ``timesteps``, in
        float64 (its differences are step sizes of the solvers)."""
        alpha_bar = self.alpha_bar(timesteps).to(torch.float64)
        return 0.5 * (alpha_bar.log() - torch.log1p(-alpha_bar))

    # --- training ----------------------------------------------------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise``.

        Args:
            original_samples: x0, shape (B, C, *spatial).
            noise: standard normal noise of the same shape.
            timesteps: float network-unit times, shape (B,) (one per sample) or a scalar.

        Returns:
            x_t, shape (B, C, *spatial).
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from sample {tuple(original_samples.shape)}")
        alpha_bar = self._alpha_bar_like(timesteps, original_samples)
        return alpha_bar.sqrt() * original_samples + (1.0 - alpha_bar).sqrt() * noise

    # --- sampling ----------------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Make the sampling grid from t = 1 to t = 0 in network units, spaced by ``timestep_spacing``.

        Sets ``time_grid`` (``num_inference_steps + 1`` values, e.g. 1000, 980, ..., 20, 0 for 50 uniform steps),
        ``timesteps`` (where the network is evaluated, as in MONAI: the grid without its final 0, or the whole grid
        when ``set_alpha_to_one`` is False) and ``next_timesteps`` (the target of each step, same length).

        Args:
            num_inference_steps: number of DDIM steps between t = 1 and t = 0, at least 1.
            device: device of the grid tensors.
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        # integer multiples in float64 keep grid points such as 980 exact
        steps = torch.arange(num_inference_steps, -1, -1, dtype=torch.float64)
        if self.timestep_spacing == "logsnr":
            grid = self._logsnr_times(num_inference_steps)
        else:
            grid = steps * (self.num_train_timesteps / num_inference_steps)
        grid = grid.to(device=device, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps
        self.time_grid = grid
        if self.set_alpha_to_one:
            self.timesteps, self.next_timesteps = grid[:-1], grid[1:]
        else:  # one more evaluation at t = 0, whose step returns x̂0
            self.timesteps, self.next_timesteps = grid, torch.cat([grid[1:], grid[-1:]])

    def _logsnr_times(self, num_inference_steps: int) -> torch.Tensor:
        """``num_inference_steps + 1`` network-unit times from T to 0, equally spaced in log-SNR, float64.

        The schedule is inverted numerically (any registered ``alpha_bar`` decreasing in t), by linear interpolation
        in a table of 100 001 times; where a clamp of the schedule makes lambda flat (t near 1) the table keeps the
        first time of the flat part, and the ends of the grid are T and 0 exactly.
        """
        times = torch.linspace(0.0, float(self.num_train_timesteps), 100_001, dtype=torch.float64)
        lam = self.log_snr(times)
        keep = torch.ones_like(lam, dtype=torch.bool)
        keep[1:] = lam[1:] < lam[:-1]
        times, lam = times[keep].flip(0), lam[keep].flip(0)  # lambda increasing
        targets = torch.linspace(float(lam[0]), float(lam[-1]), num_inference_steps + 1, dtype=torch.float64)
        right = torch.searchsorted(lam, targets).clamp(1, len(lam) - 1)
        weight = (targets - lam[right - 1]) / (lam[right] - lam[right - 1])
        grid = times[right - 1] + weight * (times[right] - times[right - 1])
        grid[0], grid[-1] = float(self.num_train_timesteps), 0.0
        return grid

    def next_timestep(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """The target of the step from ``timestep`` on the grid made by :meth:`set_timesteps`.

        Args:
            timestep: a scalar network-unit time that lies on ``timesteps``.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) first, or pass next_timestep to step()")
        t = torch.as_tensor(timestep, dtype=torch.float32, device=self.timesteps.device)
        if t.numel() != 1:
            raise ValueError("without next_timestep, step() needs a scalar timestep on the grid; pass next_timestep")
        distance = (self.timesteps - t.reshape(())).abs()
        index = int(distance.argmin())
        if float(distance[index]) > 1e-3:
            raise ValueError(f"timestep {float(t):g} is not on the inference grid; pass next_timestep to step()")
        return self.next_timesteps[index]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        next_timestep: torch.Tensor | float | None = None,
    ) -> DDIMStepOutput:
        """One deterministic DDIM step from ``timestep`` to ``next_timestep`` given the network's x̂0.

        ``eps = (x_t - sqrt(ab_t) * x̂0) / sqrt(1 - ab_t)``,
        ``x_next = sqrt(ab_next) * x̂0 + sqrt(1 - ab_next) * eps``
        (DDIM eq. 12 with sigma = 0), x̂0 clipped first. The result is x̂0 itself where ``timestep <= 0``, and where
        ``next_timestep <= 0`` if ``set_alpha_to_one``.

        Args:
            model_output: x̂0 predicted at ``timestep``, shape (B, C, *spatial).
            timestep: current network-unit time: a scalar or shape (B,).
            sample: x_t, shape (B, C, *spatial).
            next_timestep: target network-unit time, a scalar or shape (B,); default: the next grid point.

        Returns:
            ``DDIMStepOutput(prev_sample, pred_original_sample)``, both shaped like ``sample``.
        """
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output {tuple(model_output.shape)} differs from sample {tuple(sample.shape)}")
        if next_timestep is None:
            next_timestep = self.next_timestep(timestep)
        pred_x0 = model_output
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(*self.clip_sample_values)
        prev = self._update(pred_x0, timestep, sample, next_timestep)
        # the last step returns x̂0 exactly (no residual sqrt(1 - alpha_bar(0)) ≈ 0.0125 of noise)
        final = torch.as_tensor(timestep, device=sample.device) <= 0
        if self.set_alpha_to_one:
            final = final | (torch.as_tensor(next_timestep, device=sample.device) <= 0)
        final = unsqueeze_right(final, sample.ndim)
        prev = torch.where(final, pred_x0, prev)
        return DDIMStepOutput(prev, pred_x0)

    def _update(
        self,
        pred_x0: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        next_timestep: torch.Tensor | float,
    ) -> torch.Tensor:
        """x at ``next_timestep`` from x_t and the clipped x̂0: the DDIM update (a solver overrides only this)."""
        alpha_bar = self._alpha_bar_like(timestep, sample)
        pred_eps = (sample - alpha_bar.sqrt() * pred_x0) / (1.0 - alpha_bar).sqrt()
        alpha_bar_next = self._alpha_bar_like(next_timestep, sample)
        return alpha_bar_next.sqrt() * pred_x0 + (1.0 - alpha_bar_next).sqrt() * pred_eps


class ContinuousDPMSolverScheduler(ContinuousDDIMScheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, second order, data prediction) on the same continuous schedule.

    With ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``, ``lambda = log(alpha / sigma)`` and
    ``h = lambda_next - lambda_t``, a step is ``x_next = (sigma_next / sigma_t) x_t - alpha_next (e^-h - 1) D`` where
    ``D`` is the clipped x̂0 in the first step (which is exactly DDIM's step) and, from the second on, the
    extrapolation ``(1 + 1 / 2r) x̂0_t - (1 / 2r) x̂0_prev`` with ``r = h_prev / h``. So with the same number of
    network evaluations it follows the probability-flow ODE to second order where DDIM is first order; a fixed
    channel, whose x̂0 is the same at every step, stays exact.

    The grid is uniform in log-SNR by default (``timestep_spacing="logsnr"``, as in Lu et al.): on the cosine
    schedule a uniform-time grid leaves one long last step from sigma ≈ 0.1 (17 steps) to 0, which dominates the
    error whatever the solver's order (docs/benchmarks.md). The clipping, ``set_alpha_to_one`` (the step to t = 0
    returns x̂0) and the interface are the DDIM scheduler's; the only state is the previous step's x̂0 and ``h``,
    cleared by :meth:`set_timesteps`. Steps must therefore run in order, once each, as a sampling loop does.
    """

    default_timestep_spacing = "logsnr"
    display_name = "DPM-Solver++(2M)"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x̂0, h) of the step before

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        self._previous = None

    def _update(
        self,
        pred_x0: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        next_timestep: torch.Tensor | float,
    ) -> torch.Tensor:
        """The DPM-Solver++(2M) update (the class docstring); the clipping and the final step are the DDIM step's."""
        alpha_bar, alpha_bar_next = self._alpha_bar_like(timestep, sample), self._alpha_bar_like(next_timestep, sample)
        h = self._log_snr_like(next_timestep, sample) - self._log_snr_like(timestep, sample)
        data = pred_x0
        if self._previous is not None:
            previous_x0, previous_h = self._previous
            half_over_r = (0.5 * h / previous_h).to(sample.dtype)
            data = (1.0 + half_over_r) * pred_x0 - half_over_r * previous_x0
        self._previous = (pred_x0, h)
        sigma_ratio = ((1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
        return sigma_ratio * sample - alpha_bar_next.sqrt() * torch.expm1(-h).to(sample.dtype) * data


TIMESTEP_SPACINGS = ("uniform", "logsnr")
SCHEDULERS = {"ddim": ContinuousDDIMScheduler, "dpmpp_2m": ContinuousDPMSolverScheduler}


def get_scheduler(name: str, conventions: ModelConventions | None = None, **kwargs) -> ContinuousDDIMScheduler:
    """The sampler ``name`` (``ddim``, the default that reproduces the official loop, or ``dpmpp_2m``), set up for
    weights of ``conventions`` (see :meth:`ContinuousDDIMScheduler.for_conventions`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"sampler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    if conventions is None:
        return SCHEDULERS[name](**kwargs)
    return SCHEDULERS[name].for_conventions(conventions, **kwargs)
