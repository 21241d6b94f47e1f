"""Training under hostile input and interruption: an unreadable newest checkpoint is named and passed over for the
one before it (and never counted among the kept ones), all unreadable stops in one line, the temporaries of a killed
write are removed by the next run, a checkpoint of another network is refused in one line, and a damaged weights
file is named in one line that never proposes ``weights_only=False``.

The resume cases run the tiny regression trainer of ``tests/test_engines.py`` (milliseconds); the config cases run
the ``tiny`` preset on the 32³ phantom of ``tests/test_training.py`` with its helpers.
"""

from __future__ import annotations

import argparse
import logging
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

import scripts.engines.checkpoint as checkpoint_module
from scripts.engines import AtomicCheckpointSaver, ResumeFromLatest, RNGState, list_checkpoints
from scripts.engines.checkpoint import CheckpointMismatchError
from scripts.networks import build_network, load_network, save_network
from scripts.networks.weights import UnreadableWeightsError, read_state_file
from tests.test_engines import fixed_batches, noisy_targets
from tests.test_training import ROOT, TRAIN, cli, overrides, quiet_env, shared, workflow  # noqa: F401 (fixture)

LOGGER = checkpoint_module.__name__


def make_trainer(out_dir: Path, max_epochs: int, n_saved: int | None = 2) -> SupervisedTrainer:
    """A 3-iteration-per-epoch regression trainer that resumes from and saves to ``out_dir`` every 3 iterations."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=0.05)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        epoch_length=3,
        train_data_loader=torch.utils.data.DataLoader(fixed_batches(), batch_size=None),
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        prepare_batch=noisy_targets,
    )
    save_dict = {"network": net, "optimizer": opt, "trainer": trainer, "rng": RNGState()}
    ResumeFromLatest(out_dir, save_dict).attach(trainer)
    AtomicCheckpointSaver(out_dir, save_dict, save_interval=3, n_saved=n_saved).attach(trainer)
    return trainer


def record_start(trainer: SupervisedTrainer) -> dict:
    """The iteration the trainer starts from (its STARTED handler runs after the loader's)."""
    at_start: dict = {}
    trainer.add_event_handler(Events.STARTED, lambda engine: at_start.update(iteration=engine.state.iteration))
    return at_start


def damage(path: Path, how: str) -> None:
    """Make a checkpoint unreadable the ways disks and copies do."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not torch":
        path.write_text("<html>404 not found</html>\n")
    elif how == "flipped bytes":  # the archive's structure intact, a tensor's bytes not: only its CRC tells
        with zipfile.ZipFile(path) as archive:
            member = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
        # a local header is 30 bytes, then the name and the extra field (torch's alignment padding)
        name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
        start = member.header_offset + 30 + name_length + extra_length
        damaged = bytearray(data)
        damaged[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
        path.write_bytes(bytes(damaged))


def iteration_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["trainer"]["iteration"]


@pytest.mark.parametrize("how", ["truncated", "empty", "not torch", "flipped bytes"])
def test_unreadable_newest_checkpoint_is_named_and_the_one_before_resumed(tmp_path, caplog, how):
    make_trainer(tmp_path, max_epochs=2).run()  # checkpoints 3 and 6
    damage(tmp_path / "checkpoint_6.pt", how)

    resumed = make_trainer(tmp_path, max_epochs=2)
    at_start = record_start(resumed)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        resumed.run()

    assert at_start["iteration"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path / "checkpoint_6.pt") in warnings[0], warnings
    assert "truncated or damaged" in warnings[0] and "\n" not in warnings[0]
    # the run got back to iteration 6: its checkpoint replaced the unreadable one, and the intact 3 is still kept
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_3.pt", "checkpoint_6.pt"]
    assert iteration_of(tmp_path / "checkpoint_6.pt") == 6


def test_a_skipped_checkpoint_is_not_counted_among_the_kept_ones(tmp_path):
    make_trainer(tmp_path, max_epochs=1, n_saved=1).run()  # checkpoint 3
    (tmp_path / "checkpoint_9.pt").write_bytes(b"")  # a newer one, unreadable
    resumed = make_trainer(tmp_path, max_epochs=2, n_saved=1)
    at_start = record_start(resumed)
    resumed.run()

    assert at_start["iteration"] == 3
    # counted, the unreadable 9 would have been kept as "the newest" and the new checkpoint 6 deleted with 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_6.pt", "checkpoint_9.pt"]
    assert iteration_of(tmp_path / "checkpoint_6.pt") == 6
    assert (tmp_path / "checkpoint_9.pt").read_bytes() == b""  # left as found, nothing lost


def test_every_checkpoint_unreadable_stops_in_one_line_naming_them(tmp_path):
    make_trainer(tmp_path, max_epochs=2).run()
    damage(tmp_path / "checkpoint_3.pt", "empty")
    damage(tmp_path / "checkpoint_6.pt", "truncated")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(ValueError) as raised:
        make_trainer(tmp_path, max_epochs=4).run()

    message = str(raised.value)
    assert "\n" not in message and "checkpoint_3.pt" in message and "checkpoint_6.pt" in message
    assert str(tmp_path) in message and "--resume false" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing deleted or written


def write_stale_temporaries(folder: Path) -> list[str]:
    """What killed checkpoint writes leave: Ignite DiskSaver's temporary (made as it makes them) holding the start
    of a checkpoint, and an ``atomic_path`` temporary; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = (folder / "checkpoint_3.pt").read_bytes()[:1000] if (folder / "checkpoint_3.pt").exists() else b""
    with tempfile.NamedTemporaryFile(delete=False, dir=folder) as ignite_tmp:  # ignite's _save_func, killed mid-save
        ignite_tmp.write(partial)
    atomic_tmp = folder / ".checkpoint_9.pt.k3j2h1.tmp.pt"
    atomic_tmp.write_bytes(partial)
    return sorted([Path(ignite_tmp.name).name, atomic_tmp.name])


def test_temporaries_of_a_killed_write_are_removed_by_the_next_run(tmp_path, caplog):
    make_trainer(tmp_path, max_epochs=1).run()  # checkpoint 3
    stale = write_stale_temporaries(tmp_path)
    (tmp_path / "tmpnotes.txt").write_text("not a checkpoint write")  # near the pattern, not ours: kept
    (tmp_path / "tmp12345678").write_text("not a zip: not written by torch.save")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        make_trainer(tmp_path, max_epochs=2).run()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_3.pt", "checkpoint_6.pt", "tmp12345678", "tmpnotes.txt"]
    removed = [r.getMessage() for r in caplog.records if "temporary" in r.getMessage()]
    assert len(removed) == 1 and all(name in removed[0] for name in stale), removed


def test_temporaries_are_left_to_rank_zero(tmp_path, monkeypatch):
    make_trainer(tmp_path, max_epochs=1).run()
    stale = write_stale_temporaries(tmp_path)
    monkeypatch.setattr(checkpoint_module, "_process_rank", lambda: 1)
    AtomicCheckpointSaver(tmp_path, {"rng": RNGState()}, save_interval=3).attach(Engine(lambda engine, batch: None))
    assert all((tmp_path / name).exists() for name in stale)


@pytest.mark.parametrize("how", ["truncated", "empty", "not torch"])
def test_damaged_weights_file_fails_in_one_line_naming_it(tmp_path, how):
    network = build_network("tiny", "lowres")
    path = save_network(tmp_path / "lowres.pt", network, network.config, "lowres")
    damage(path, how)

    with pytest.raises(UnreadableWeightsError) as raised:
        load_network(path, "lowres")

    message = str(raised.value)
    assert (
        message == f"{path} is not a readable PyTorch weights file (truncated or damaged): re-export or re-download it"
    )
    assert "weights_only" not in message


def test_weights_holding_other_objects_fail_in_one_line(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)  # as training scripts store their options
    with pytest.raises(UnreadableWeightsError) as raised:
        read_state_file(path)
    message = str(raised.value)
    assert str(path) in message and "argparse.Namespace" in message
    assert "\n" not in message and "weights_only" not in message


def error_chain(error: BaseException) -> list[BaseException]:
    """An exception and its causes (MONAI wraps what a config expression raises)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def test_resume_with_another_preset_fails_in_one_line_naming_the_checkpoint(shared, tmp_path):  # noqa: F811
    first = workflow(TRAIN, overrides(shared, tmp_path))  # tiny preset: checkpoint_2
    first.run()
    first.finalize()
    checkpoint = list_checkpoints(tmp_path / "checkpoints")[-1]
    saved = checkpoint.read_bytes()

    again = workflow(TRAIN, overrides(shared, tmp_path, preset="small", network_overrides={}))
    with pytest.raises(Exception) as raised:
        again.run()

    mismatch = [e for e in error_chain(raised.value) if isinstance(e, CheckpointMismatchError)]
    assert mismatch, error_chain(raised.value)
    message = str(mismatch[0])
    assert message.startswith(f"{checkpoint} was written by a different network (network: ") and "\n" not in message
    assert message.endswith(
        "use the same preset and network_overrides as that run, or another output_dir, or --resume false"
    )
    assert checkpoint.read_bytes() == saved


def test_bundle_run_resumes_past_a_truncated_checkpoint(shared, tmp_path):  # noqa: F811
    settings = overrides(shared, tmp_path, save_interval=1, n_saved=5)
    first = workflow(TRAIN, settings)  # checkpoints 1 and 2 (two training cases, batch 1)
    first.run()
    first.finalize()
    damage(tmp_path / "checkpoints" / "checkpoint_2.pt", "truncated")

    result = subprocess.run(
        cli(TRAIN, {**settings, "max_epochs": 2}),
        cwd=ROOT,
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    broken = tmp_path / "checkpoints" / "checkpoint_2.pt"
    assert f"WARNING - {broken} is not a readable training checkpoint (truncated or damaged)" in log, log[-3000:]
    assert f"Restored all variables from {tmp_path / 'checkpoints' / 'checkpoint_1.pt'}" in log
    assert "Traceback" not in log
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-2:] == ["checkpoint_3.pt", "checkpoint_4.pt"]
    assert iteration_of(broken) == 2  # replaced when the run got back to it
