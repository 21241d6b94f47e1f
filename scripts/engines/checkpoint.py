"""Atomic, resumable training checkpoints.

MONAI's ``CheckpointSaver`` writes non-atomically, so a process killed mid-write can leave a truncated latest
checkpoint. :class:`AtomicCheckpointSaver` uses Ignite's ``Checkpoint`` with an atomic ``DiskSaver`` (temporary file
then rename) and keeps the last N; :class:`ResumeFromLatest` is MONAI's ``CheckpointLoader`` pointed at the newest
intact checkpoint of a folder, so rerunning the same command resumes.

A checkpoint that cannot be read (copied in part, damaged on disk) is named in a warning, left in place and passed
over for the one before it; a rerun removes the temporary files a killed write left in the checkpoint folder.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

from scripts.conventions import TEXT_TOKENS, ModelConventions, conventions_from_description, get_conventions
from scripts.data.io import remove_stale_temporaries
from scripts.networks import MedSynUNet, load_state, read_description
from scripts.networks.weights import (
    UnreadableWeightsError,
    described_network,
    description_path,
    read_state_file,
    state_difference,
)
from scripts.text.backends import OFFICIAL_LM_FILE
from scripts.text.encoder import OFFICIAL_LANGUAGE_MODEL

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
_ITERATION = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)\.pt$")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The complete checkpoints (``checkpoint_<iteration>.pt``) of ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _ITERATION.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest iteration in ``directory``, or None (readable or not: see
    :class:`ResumeFromLatest`)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def checkpoint_iteration(path: str | Path) -> int:
    """The iteration in a ``checkpoint_<iteration>.pt`` name."""
    match = _ITERATION.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named {CHECKPOINT_PREFIX}_<iteration>.pt")
    return int(match.group(1))


# Ignite's atomic DiskSaver writes into tempfile.NamedTemporaryFile(dir=save_dir): "tmp" and eight characters of
# tempfile's alphabet, not the ".<name>.<random>.tmp" of scripts.data.io.atomic_path
_IGNITE_TEMPORARY = re.compile(r"^tmp[a-z0-9_]{8}$")
_ZIP_MAGIC = b"PK\x03\x04"


def _is_ignite_temporary(path: Path) -> bool:
    if not (_IGNITE_TEMPORARY.match(path.name) and path.is_file()):
        return False
    # torch.save writes a zip archive from its first byte: anything else with such a name is not ours to remove
    with open(path, "rb") as stream:
        head = stream.read(len(_ZIP_MAGIC))
    return head in (b"", _ZIP_MAGIC)


def remove_checkpoint_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoint writes that a killed run left in ``directory`` (Ignite's
    ``tmpXXXXXXXX`` and :func:`scripts.data.io.atomic_path`'s ``.<name>.<random>.tmp``); returns them.

    A checkpoint is written to a temporary file then renamed, so a run killed mid-write leaves a whole checkpoint's
    worth of bytes under a name no run reads. Call it only for a folder no live process is writing into: the
    training configs' saver does so on rank 0 when it attaches, before the first save of the rerun.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = remove_stale_temporaries(directory)
    for path in sorted(directory.iterdir()):
        if _is_ignite_temporary(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info(
            f"removed {len(removed)} temporary file(s) of interrupted checkpoint writes from {directory}: "
            + ", ".join(p.name for p in removed)
        )
    return removed


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) random states as a checkpoint entry, stored as tensors so that
    ``torch.load(weights_only=True)`` can read them back.

    Only rank 0 writes checkpoints, so a multi-process run restores rank 0's states everywhere. Identical streams
    would give every rank the same noise and timesteps, so a rank ``r > 0`` reseeds right after loading from a seed
    drawn from the restored stream plus ``r``: distinct per rank, and the same on every resume of the checkpoint.
    """

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        py_version, py_internal, py_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.stack(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else torch.empty(0),
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python": torch.tensor(py_internal, dtype=torch.int64),
            "python_version": int(py_version),
            "python_gauss": py_gauss,
        }

    def load_state_dict(self, state: dict) -> None:
        # generator states are host tensors: a checkpoint loaded with map_location="cuda" (the training configs'
        # @device) brings them onto the GPU, which torch.set_rng_state and cuda.set_rng_state_all refuse
        torch.set_rng_state(state["torch"].cpu())
        if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))
        has_gauss, cached = state["numpy_gauss"]
        np.random.set_state(
            ("MT19937", state["numpy_keys"].cpu().numpy().astype(np.uint32), state["numpy_pos"], has_gauss, cached)
        )
        random.setstate((state["python_version"], tuple(state["python"].cpu().tolist()), state["python_gauss"]))
        rank = _process_rank()
        if rank > 0:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) + rank
            torch.manual_seed(seed)  # CPU and every CUDA device
            np.random.seed(seed % 2**32)
            random.seed(seed)


def _process_rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


class AtomicCheckpointSaver:
    """Save ``save_dict`` every ``save_interval`` iterations and at the end, atomically, keeping the last ``n_saved``.

    When it attaches (rank 0), it removes the temporary files a killed write left in ``save_dir``.

    Args:
        save_dir: folder for ``checkpoint_<iteration>.pt`` files.
        save_dict: name → object with ``state_dict()`` (network, EMA, optimizer, scaler, scheduler, trainer, RNG).
        save_interval: iterations between checkpoints (> 0).
        n_saved: how many recent checkpoints to keep (None keeps all).
        save_final: also save when the run completes.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict,
        save_interval: int,
        n_saved: int | None = 2,
        save_final: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1 iteration, got {save_interval}")
        if n_saved is not None and n_saved < 1:
            raise ValueError(f"n_saved must be >= 1 or None, got {n_saved}")
        self.save_dir = Path(save_dir)
        self.save_interval = save_interval
        self.save_final = save_final
        self.n_saved = n_saved
        self._trained = False  # an iteration ran in this process
        self._last_saved: int | None = None
        # Ignite's own n_saved only knows the files of this process; pruning on disk also covers a resumed run
        self._checkpoint = Checkpoint(
            to_save=save_dict,
            save_handler=DiskSaver(str(save_dir), atomic=True, require_empty=False, create_dir=True),
            filename_prefix="",
            n_saved=None,
            global_step_transform=lambda engine, _: engine.state.iteration,
            filename_pattern=CHECKPOINT_PREFIX + "_{global_step}.{ext}",
            include_self=False,
        )

    def attach(self, engine: Engine) -> None:
        if _process_rank() == 0:  # the only writer; other ranks must not race it
            remove_checkpoint_temporaries(self.save_dir)
        # registered before the save handler, so an interval save already sees its iteration as trained
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._note_training)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self)

    def _note_training(self, engine: Engine) -> None:
        self._trained = True

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if iteration == self._last_saved:
            return  # the final save fell on an interval save
        if (self.save_dir / f"{CHECKPOINT_PREFIX}_{iteration}.pt").exists() and not self._trained:
            return  # a resumed run with nothing new: that file is the one it resumed from
        # any other file of this iteration is one the run did not resume from (passed over as unreadable, or left by
        # a run this one started over from): the new checkpoint replaces it
        self._checkpoint(engine)
        self._last_saved = iteration
        logger.info(f"saved checkpoint {self._checkpoint.last_checkpoint}")
        if self.n_saved is not None:
            # checkpoints past this iteration are not of this run's line (the loader passed over them as unreadable,
            # or this run started over): counting them would delete the intact ones this run just wrote
            mine = [p for p in list_checkpoints(self.save_dir) if checkpoint_iteration(p) <= iteration]
            for old in mine[: -self.n_saved]:
                old.unlink()


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another network than the one this run builds (another preset or overrides)."""


def _is_tensor_state(state: Any) -> bool:
    # a module's (or the EMA's) state dict: the optimizer's, trainer's and RNG's hold other values too
    return isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())


class ResumeFromLatest(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that loads the newest intact checkpoint of ``load_dir`` when the run starts, and
    does nothing when there is none (a fresh run). Rerunning a killed command therefore continues it.

    A checkpoint that cannot be read (truncated, damaged, not a PyTorch file) is named in a warning and left in
    place, and the one before it is tried; the saver replaces it when the run gets back to its iteration.

    Args:
        load_dir: folder written by :class:`AtomicCheckpointSaver`.
        load_dict: the same name → object mapping that was saved.
        map_location: passed to ``torch.load`` (loading uses ``weights_only=True``).

    Raises (when the run starts):
        ValueError: every checkpoint is unreadable, the checkpoint was written by another network
            (:class:`CheckpointMismatchError`), or it is past ``max_epochs``; one line naming the file(s) and the fix.
    """

    def __init__(self, load_dir: str | Path, load_dict: dict, map_location: dict | str | None = None) -> None:
        self.load_dir = Path(load_dir)
        latest = latest_checkpoint(self.load_dir)
        super().__init__(load_path=str(latest) if latest else "", load_dict=load_dict, map_location=map_location)
        self.found = latest  # the newest file; after loading, the one loaded

    def attach(self, engine: Engine) -> None:
        if self.found is None:
            logger.info(f"no checkpoint in {self.load_dir}: starting a fresh run")
            return
        super().attach(engine)

    def _read_newest_intact(self) -> tuple[Path, dict]:
        """The newest checkpoint that reads, and its contents; warns of each newer one that does not."""
        unreadable = []
        for path in reversed(list_checkpoints(self.load_dir)):
            try:
                checkpoint = read_state_file(
                    path,
                    "training checkpoint",
                    "left in place and passed over for the checkpoint before it",
                    map_location=self.map_location,
                    verify=True,
                )
            except (UnreadableWeightsError, FileNotFoundError) as err:
                # FileNotFoundError: gone between listing and reading (pruned by a run still writing here)
                logger.warning(str(err) if isinstance(err, UnreadableWeightsError) else f"{path} vanished: skipped")
                unreadable.append(path.name)
                continue
            if not isinstance(checkpoint, Mapping):
                logger.warning(f"{path} holds a {type(checkpoint).__name__}, not a training checkpoint: skipped")
                unreadable.append(path.name)
                continue
            return path, dict(checkpoint)
        raise ValueError(
            f"no readable checkpoint in {self.load_dir}: {', '.join(reversed(unreadable))} truncated or damaged; "
            "delete them to start afresh, or pass --resume false"
        )

    def _check_same_network(self, path: Path, checkpoint: Mapping[str, Any]) -> None:
        """Refuse, before anything is loaded, a checkpoint whose modules have other keys or shapes."""
        for name, obj in self.load_dict.items():
            saved = checkpoint.get(name)
            if not _is_tensor_state(saved) or not hasattr(obj, "state_dict"):
                continue
            own = obj.state_dict()
            if not _is_tensor_state(own):
                continue
            difference = state_difference(own, saved)
            if difference:
                raise CheckpointMismatchError(
                    f"{path} was written by a different network ({name}: {difference}): use the same preset and "
                    "network_overrides as that run, or another output_dir, or --resume false"
                )

    def __call__(self, engine: Engine) -> None:
        path, checkpoint = self._read_newest_intact()
        self.found, self.load_path = path, str(path)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:  # a bare state dict, as MONAI's loader accepts
            checkpoint = {first: checkpoint}
        self._check_same_network(path, checkpoint)
        max_epochs = engine.state.max_epochs
        # MONAI's loader without its torch.load: what the checkpoint restores, and the max_epochs it keeps
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(
                f"{path} is at epoch {engine.state.epoch}, past max_epochs={max_epochs}: pass a larger "
                "--max_epochs to continue this run, or --resume false to start over"
            )
        engine.state.max_epochs = max_epochs
        self.logger.info(f"Restored all variables from {path}")


def start_from_weights(
    network: MedSynUNet,
    weights: str | Path,
    stage: str,
    text_model: str | None = None,
    conventions: str | ModelConventions | None = None,
    text_input: str = "sections",
    text_context_tokens: int | None = None,
) -> MedSynUNet:
    """Fill a freshly built network with exported weights (``NAME.pt`` + ``NAME.json``), to fine-tune or continue
    from them in a new run; ``weights=""`` returns the network untouched (training from scratch).

    This runs before the EMA copy is made, so the average starts from the same weights. A checkpoint found by
    :class:`ResumeFromLatest` is loaded afterwards and replaces them: rerunning a fine-tune command resumes it.

    Args:
        network: the network built from the config's ``preset`` and ``network_overrides``.
        weights: path of the exported weights, or "".
        stage: the config's stage; the weights must be of it.
        text_model: the config's text encoder name, checked against the one the weights were trained with.
        conventions: the config's conventions, checked against the ones the weights record (official weights are
            fine-tuned with ``conventions: medsyn-official``).
        text_input, text_context_tokens: the config's text settings (stage 1), checked against the weights'
            ``text_encoder_info``: the same model fed differently prepared text would be trained on other features.

    Raises:
        WeightsNotFoundError, ValueError: one line naming the file and what differs (stage, network layout, text,
            conventions).
    """
    if not weights:
        return network
    hint = "init_weights takes a .pt written by the training config's export (with its .json), or '' to start afresh"
    info = read_description(weights, stage, hint)
    config = json.loads(json.dumps(network.config))  # tuples as the description's lists
    described = described_network(info)
    differ = sorted(k for k in config.keys() | described.keys() if config.get(k) != described.get(k))
    if differ:
        raise ValueError(
            f"{weights} holds a different network ({', '.join(differ)} differ): set preset and network_overrides "
            f"to its description {description_path(weights).name}"
        )
    recorded, wanted = conventions_from_description(info), get_conventions(conventions)
    if recorded != wanted:
        raise ValueError(
            f"{weights} records conventions {recorded.name!r}, this config uses {wanted.name!r}: set conventions to "
            f"{recorded.name!r} (docs/official_weights.md)"
        )
    trained_with = info.get("text_encoder")
    if text_model is not None and trained_with is not None and trained_with != text_model:
        raise ValueError(f"{weights} was trained with text_model {trained_with!r}, this config uses {text_model!r}")
    text_info = info.get("text_encoder_info") or {}
    if text_model is not None and text_info:
        text_recorded = (text_info.get("text_input", "sections"), text_info.get("context_tokens", TEXT_TOKENS))
        text_configured = (text_input, text_context_tokens or TEXT_TOKENS)
        if text_recorded != text_configured:
            raise ValueError(
                f"{weights} reads text prepared as text_input={text_recorded[0]!r}, "
                f"text_context_tokens={text_recorded[1]}; this config has {text_configured[0]!r}, "
                f"{text_configured[1]}: set them to the weights' values"
            )
        if text_info.get("kind") == OFFICIAL_LANGUAGE_MODEL and not (Path(text_model) / OFFICIAL_LM_FILE).is_file():
            raise ValueError(f"{weights} reads the official MedSyn language model: set text_model to its folder")
    load_state(network, weights, "the network of this config")
    logger.info(f"starting from the weights of {weights} (iteration {info.get('iteration', '?')} of their run)")
    return network
