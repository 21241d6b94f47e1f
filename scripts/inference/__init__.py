"""Inference: report → 64³ joint CT + anatomy → 256³, anatomy control and segmentation, files on disk.

- :mod:`.cascade`: the two stages' weights loaded with the model grid and conventions their descriptions record.
- :mod:`.tiling`: a sliding-window wrapper that runs a denoiser network over tiles (memory-bounded 256³), and when.
- :mod:`.pipeline`: :class:`MedSynPipeline`, the two stages composed from the diffusion denoisers.
- :mod:`.prompts`: reading reports from the command line, text, CSV or JSON files.
- :mod:`.writer`: NIfTI + JSON sidecar + PNG per sample, atomic and never silently overwritten.
- :mod:`.workflow`: the ``inference`` and ``synthesize`` runs of ``configs/inference.json``.
- :mod:`.segmentation`: the joint model as a segmentation network, the ``segment`` run and MONAI Label's entry
  (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``, ``models/model.pt``).
"""

from scripts.inference.pipeline import MedSynPipeline, PipelineOutput
from scripts.inference.prompts import Prompt, read_prompts
from scripts.inference.tiling import SlidingWindowNetwork
from scripts.inference.writer import SampleWriter
from scripts.networks.weights import WeightsNotFoundError, load_network, save_network
