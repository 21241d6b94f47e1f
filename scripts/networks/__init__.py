"""Denoiser networks of MedSyn (docs/official_weights.md) and loading of the official checkpoints.

Public API:
    MedSynUNet                     the one network class of both stages
    build_network(preset, stage)   a registered size ("paper", "small", "tiny") of stage "lowres" or "sr"
    from_official_state_dict(...)  a network holding the weights of an official MedSyn checkpoint
    save_network / load_network    the bundle's weight files: NAME.pt (state dict) + NAME.json (which network)

Not imported here: :mod:`.export` (TorchScript / ``torch.export`` files, ``python -m scripts.networks.export``).
"""

from .official import (
    OfficialCheckpointError,
    convert_official_state_dict,
    drop_schedule_buffers,
    from_official_state_dict,
    infer_official_kwargs,
    official_key_map,
    official_to_config,
    strip_prefixes,
)
from .presets import PRESETS, STAGES, build_network, parameter_counts, preset_config, register_preset
from .unet import MedSynUNet
from .weights import WeightsNotFoundError, load_network, load_state, read_description, save_network
