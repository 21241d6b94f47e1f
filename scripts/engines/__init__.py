"""Training pieces MONAI and Ignite lack: EMA weights, gradient clipping, a NaN stop, atomic resumable checkpoints,
and the data, checks, previews and exports of the diffusion training configs."""

from scripts.engines.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromLatest,
    RNGState,
    latest_checkpoint,
    list_checkpoints,
    start_from_weights,
)

# the pieces the training configs (configs/train.json, train_sr.json, multi_gpu_train.json) wire together
from scripts.engines.checks import check_context_width, check_training_config, per_process_batch, world_size
from scripts.engines.data import (
    AttachReportContext,
    ConfigError,
    DeviceCachedDataset,
    dataset_cache_dir,
    default_datalist,
    fill_embedding_cache,
    load_split,
    lowres_transforms,
    sr_transforms,
)
from scripts.engines.distributed import (
    check_replicas_agree,
    default_backend,
    is_rank_zero,
    local_device,
    wrap_ddp,
)
from scripts.engines.evaluation import ReseedEachRun, TrainerIteration, lower_is_better
from scripts.engines.export import ExportEMA, checkpoint_items, encoder_description, export_latest, export_weights
from scripts.engines.handlers import EMAHandler, GradientClipHandler, NaNGuard, optimizer_steps_now
from scripts.engines.preview import SamplePreview
