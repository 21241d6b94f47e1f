"""Training pieces MONAI and Ignite lack: EMA weights, gradient clipping, a NaN stop, atomic resumable checkpoints."""

from scripts.engines.checkpoint import AtomicCheckpointSaver, ResumeFromLatest, RNGState, latest_checkpoint, list_checkpoints
from scripts.engines.handlers import EMAHandler, GradientClipHandler, NaNGuard, optimizer_steps_now
