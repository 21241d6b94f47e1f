"""MedSyn-MONAI: text-guided, anatomy-aware cascaded 3D diffusion for chest CT, as a MONAI bundle.

The package is laid out in pipeline order and each part imports only from the parts before it:
``cli`` (option parsing and one-line failures, importing nothing of the bundle) → ``conventions`` → ``data`` /
``phantom`` → ``anatomy`` → ``text`` → ``networks`` → ``diffusion`` → ``engines`` →
``inference`` → ``evaluation``. ``anatomy`` (mask making) belongs to data preparation: it makes the training masks
and needs only ``conventions``, ``data`` and ``phantom``; ``evaluation`` builds its anatomy measures on it (one
TotalSegmentator integration, one classical segmentation). Bundle configs import it as ``$scripts...``.
"""

import json
import logging
import warnings
from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def _bundle_version() -> str:
    # configs/metadata.json is the one place the version is kept (the model zoo reads it there)
    try:
        return json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


__version__ = _bundle_version()

# With pydicom installed (DICOM in and out), MONAI 1.6 sets up its GPU DICOM decoder (nvImageCodec) in every
# LoadImage and warns twice when it is absent, which is the normal case (a CPU, or no nvImageCodec package): the
# plain pydicom decoder reads the series. Those two lines would break every one-line failure message.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
