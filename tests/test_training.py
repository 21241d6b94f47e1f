"""The training configs end to end on a tiny phantom: both stages train, checkpoint, preview and export; a fixed
batch is overfitted; a SIGKILLed run resumes exactly; bad settings fail before training; the multi-GPU overlay runs with
torchrun on two CPU processes (gloo).

Every run uses the ``tiny`` preset on a 32³ phantom (low-res 8³, super-resolution crops 8×16×16) with one torch thread
(two threads on two busy cores are several times slower). One phantom and one text-embedding cache serve all tests.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from scripts.engines import (
    ConfigError,
    DeviceCachedDataset,
    fill_embedding_cache,
    latest_checkpoint,
    list_checkpoints,
    load_split,
)
from scripts.networks import build_network, load_network, save_network
from scripts.phantom import write_dataset
from scripts.text import ReportEncoder

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "configs" / "train.json")
TRAIN_SR = str(ROOT / "configs" / "train_sr.json")
MULTI_GPU = str(ROOT / "configs" / "multi_gpu_train.json")
META = str(ROOT / "configs" / "metadata.json")
LOGGING = str(ROOT / "configs" / "logging.conf")


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> dict:
    """A 3-case 32³ phantom (2 training, 1 validation) and the text cache of its reports, made once."""
    root = tmp_path_factory.mktemp("training_data")
    datalist = write_dataset(root / "phantom", num=3, size=32, seed=0, val_fraction=0.34)
    cache_dir = root / "text_cache"
    items = [load_split(datalist, None, section) for section in ("training", "validation")]
    fill_embedding_cache(ReportEncoder("minilm", device="cpu"), cache_dir, items)
    return {"datalist": str(datalist), "text_cache_dir": str(cache_dir), "root": root}


def overrides(shared: dict, output_dir: Path, stage: str = "lowres", **more) -> dict:
    """Settings of a fast CPU test run (tiny preset, 32³ phantom, one thread), plus ``more``."""
    settings = {
        "datalist": shared["datalist"],
        "output_dir": str(output_dir),
        "preset": "tiny",
        "spacing": [10.0, 10.0, 10.0],  # the 32³ phantom's own grid (320 mm field of view)
        "size": 32,
        "batch_size": 1,
        "accumulation_steps": 1,
        "num_threads": 1,
        "max_epochs": 1,
        "val_interval": 100,
        "preview_interval": 100,
        "preview_steps": 2,
        "save_interval": 100,
    }
    if stage == "lowres":
        settings.update({"text_cache_dir": shared["text_cache_dir"], "network_overrides": {"context_dim": 384}})
    else:
        settings["crop_size"] = [8, 16, 16]
    settings.update(more)
    return settings


def workflow(config_file: str | list[str], settings: dict) -> ConfigWorkflow:
    """An initialized workflow of a training config (what ``monai.bundle run training`` builds)."""
    wf = ConfigWorkflow(config_file=config_file, meta_file=META, logging_file=False, run_id="training", **settings)
    wf.initialize()
    return wf


def cli(config_file: str, settings: dict) -> list[str]:
    """The ``python -m monai.bundle run training`` command line of ``settings``."""
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--meta_file",
        META,
        "--config_file",
        config_file,
        "--logging_file",
        LOGGING,
    ]
    for key, value in settings.items():
        args += [f"--{key}", repr(value) if not isinstance(value, str) else value]
    return args


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def causes(error: BaseException) -> str:
    """All messages of an exception chain (MONAI wraps config errors in RuntimeError)."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def test_stage1_trains_checkpoints_previews_and_exports(shared, tmp_path):
    settings = overrides(shared, tmp_path, max_epochs=2, save_interval=2, n_saved=1, val_interval=4, preview_interval=4)
    wf = workflow(TRAIN, settings)
    wf.run()
    wf.finalize()

    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_4.pt"]  # last one kept
    state = torch.load(latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert {"network", "ema", "optimizer", "lr_scheduler", "trainer", "rng"} <= set(state)
    assert state["trainer"]["iteration"] == 4
    assert (tmp_path / "previews" / "lowres_0000004.png").stat().st_size > 1000
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    network, meta = load_network(tmp_path / "lowres_ema.pt", "lowres")  # what inference loads
    assert meta["iteration"] == 4 and meta["text_encoder"] == "minilm"
    assert meta["text_encoder_info"]["hidden_size"] == 384
    assert meta["data"]["size"] == 32 and meta["data"]["spacing"] == [10.0, 10.0, 10.0]  # phantom 32³ over 320 mm
    ema = wf.parser.get_parsed_content("ema").model
    torch.testing.assert_close(network.state_dict(), ema.state_dict())
    assert wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_loss"] > 0

    # the `export` run writes the same files from the newest checkpoint, without training
    for path in tmp_path.glob("lowres_ema.*"):
        path.unlink()
    # with the config's max_epochs below the checkpoint's epoch: nothing is trained, so it still exports
    again = ConfigWorkflow(
        config_file=TRAIN, meta_file=META, logging_file=False, run_id="export", **{**settings, "max_epochs": 1}
    )
    again.initialize()
    again.run()
    exported, meta = load_network(tmp_path / "lowres_ema.pt", "lowres")
    assert meta["iteration"] == 4
    torch.testing.assert_close(exported.state_dict(), ema.state_dict())
    empty = ConfigWorkflow(
        config_file=TRAIN,
        meta_file=META,
        logging_file=False,
        run_id="export",
        **{**settings, "output_dir": str(tmp_path / "empty")},
    )
    empty.initialize()
    with pytest.raises(RuntimeError) as error:
        empty.run()
    assert "no checkpoint in" in causes(error.value)

    # resuming training with a max_epochs the checkpoint is already past says what to do, in one line
    short = workflow(TRAIN, {**settings, "max_epochs": 1})
    with pytest.raises(Exception) as error:
        short.run()
    assert "checkpoint_4.pt is at epoch 2, past max_epochs=1: pass a larger --max_epochs" in causes(error.value)


def test_stage2_trains_on_crops_and_exports(shared, tmp_path):
    settings = overrides(
        shared, tmp_path, stage="sr", max_epochs=1, save_interval=1, val_interval=2, preview_interval=2
    )
    wf = workflow(TRAIN_SR, settings)
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert tuple(batch["image"].shape) == (1, 4, 8, 16, 16)
    wf.run()
    wf.finalize()

    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_1.pt", "checkpoint_2.pt"]
    assert (tmp_path / "previews" / "sr_0000002.png").is_file()
    network, meta = load_network(tmp_path / "sr_ema.pt", "sr")
    assert network.in_channels == 8 and meta["ema_decay"] == 0.995


@pytest.mark.parametrize("config, stage", [(TRAIN, "lowres"), (TRAIN_SR, "sr")])
def test_text_only_cases_train_on_the_channels_they_have(shared, tmp_path, config, stage):
    """allow_missing_masks: a case without masks trains only its CT channel (masked loss), validation too."""
    datalist = json.loads(Path(shared["datalist"]).read_text())
    for key in ("lobe", "airway", "vessel"):
        del datalist["training"][0][key]
    path = tmp_path / "text_only.json"
    path.write_text(json.dumps(datalist))
    root = str(Path(shared["datalist"]).parent)
    settings = overrides(
        shared, tmp_path / "run", stage, datalist=str(path), dataset_dir=root, allow_missing_masks=True, val_interval=2
    )
    wf = workflow(config, settings)
    targets = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: targets.append(engine.state.output["label"])
    )
    wf.run()
    masks = sorted(tuple(target[1][0].tolist()) for target in targets)
    assert masks == [(1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)]  # the text-only case, then a full one
    assert torch.isfinite(torch.tensor(wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_loss"]))
    wf.finalize()


def test_loss_decreases_when_overfitting_one_batch(shared, tmp_path):
    """50 iterations on one fixed case: the seeded validation loss (same t and noise each time) must fall."""
    one = json.loads(Path(shared["datalist"]).read_text())["training"][:1]
    root = Path(shared["datalist"]).parent
    for item in one:
        item.update({k: str(root / item[k]) for k in ("image", "lobe", "airway", "vessel", "report_file", "truth")})
    datalist = tmp_path / "one.json"
    datalist.write_text(json.dumps({"training": one, "validation": one}))
    settings = overrides(
        shared, tmp_path, datalist=str(datalist), max_epochs=50, lr=2e-3, text_drop_prob=0.0, val_interval=50
    )
    wf = workflow(TRAIN, settings)
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    before = evaluator.state.metrics["val_loss"]
    wf.run()
    after = evaluator.state.metrics["val_loss"]
    assert after < 0.6 * before, (before, after)
    assert evaluator.state.best_metric == after  # a loss: the lowest is the best (MONAI's default keeps the highest)


def test_sigkill_then_rerun_resumes_from_the_saved_iteration(shared, tmp_path):
    settings = overrides(shared, tmp_path, max_epochs=3, save_interval=2, n_saved=5)
    process = subprocess.Popen(
        cli(TRAIN, settings), cwd=ROOT, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(tmp_path / "checkpoints") is None:
            assert process.poll() is None, f"training exited early:\n{process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    saved_path = latest_checkpoint(tmp_path / "checkpoints")
    saved = torch.load(saved_path, weights_only=True)
    assert saved["trainer"]["iteration"] < 6, "the first run finished before it could be killed"

    wf = workflow(TRAIN, settings)  # the same command again
    trainer = wf.parser.get_parsed_content("train#trainer")
    optimizer = wf.parser.get_parsed_content("optimizer")
    for index in range(len(wf.parser["training"]) - 1):  # attach the loader and saver as the config does
        wf.parser.get_parsed_content(f"training#{index}")
    at_start = {}

    @trainer.on(Events.STARTED)
    def record(engine):  # runs after the checkpoint loader (attached before it)
        at_start["iteration"] = engine.state.iteration
        at_start["optimizer"] = copy.deepcopy(optimizer.state_dict())

    trainer.run()
    assert at_start["iteration"] == saved["trainer"]["iteration"]
    torch.testing.assert_close(at_start["optimizer"]["state"], saved["optimizer"]["state"])
    assert at_start["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    assert trainer.state.iteration == 6
    final = torch.load(latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert final["trainer"]["iteration"] == 6


@pytest.mark.parametrize(
    "config, change, message",
    [
        (TRAIN_SR, {"preset": "huge"}, "config 'preset': unknown network preset 'huge'"),
        (TRAIN_SR, {"batch_size": 3, "accumulation_steps": 2}, "config 'batch_size': 3 is not divisible"),
        (TRAIN_SR, {"crop_size": [8, 12, 16]}, "config 'crop_size'"),
        (TRAIN, {"network_overrides": {}}, "context_dim 32 differs from the text encoder"),
        (TRAIN, {"datalist": "MISSING_KEYS"}, "missing key 'lobe'"),
    ],
)
def test_config_errors_fail_before_training(shared, tmp_path, config, change, message):
    stage = "sr" if config == TRAIN_SR else "lowres"
    settings = overrides(shared, tmp_path, stage=stage, **change)
    if settings["datalist"] == "MISSING_KEYS":
        datalist = json.loads(Path(shared["datalist"]).read_text())
        del datalist["training"][0]["lobe"]
        settings["datalist"] = str(tmp_path / "bad.json")
        settings["dataset_dir"] = str(Path(shared["datalist"]).parent)
        Path(settings["datalist"]).write_text(json.dumps(datalist))
    with pytest.raises((ConfigError, RuntimeError)) as raised:
        workflow(config, settings)
    assert message in causes(raised.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_multi_gpu_overlay_with_torchrun_on_two_cpu_processes(shared, tmp_path):
    settings = overrides(
        shared, tmp_path, batch_size=2, max_epochs=2, save_interval=2, val_interval=2, preview_interval=2
    )
    command = cli(f"['{TRAIN}','{MULTI_GPU}']", settings)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *command[1:]]
    result = subprocess.run(command, cwd=ROOT, env=quiet_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "rank 0: weights identical on all 2 ranks" in log and "rank 1: weights identical on all 2 ranks" in log
    checkpoint = torch.load(latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 2  # 2 cases over 2 ranks: one iteration per epoch
    assert not any(key.startswith("module.") for key in checkpoint["network"])
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 logs alone


def test_exported_weights_run_inference_end_to_end(shared, tmp_path):
    """What training exports is what inference loads: the model grid and the text encoder come with the weights."""
    from scripts.inference.workflow import InferenceRunner

    for config, stage in ((TRAIN, "lowres"), (TRAIN_SR, "sr")):
        wf = workflow(config, overrides(shared, tmp_path / stage, stage=stage, max_epochs=1))
        wf.run()
        wf.finalize()
    runner = InferenceRunner(
        tmp_path / "lowres" / "lowres_ema.pt",
        tmp_path / "sr" / "sr_ema.pt",
        tmp_path / "out",
        steps_lowres=2,
        steps_sr=1,
        device="cpu",
        progress=False,
    )
    (paths,) = runner.generate(prompt="Findings: Small left pleural effusion. Impression: Left effusion.")
    ct = __import__("nibabel").load(str(paths["ct"]))
    assert ct.shape == (32, 32, 32)
    assert tuple(round(float(z), 3) for z in ct.header.get_zooms()) == (10.0, 10.0, 10.0)


def test_init_weights_starts_a_run_from_exported_weights(shared, tmp_path):
    """Fine-tuning: the network and its EMA start from the weights; a wrong file fails in one line before training."""
    torch.manual_seed(7)
    start = build_network("tiny", "lowres", context_dim=384)
    weights = save_network(tmp_path / "start.pt", start, start.config, "lowres", text_encoder="minilm", iteration=9)
    wf = workflow(TRAIN, overrides(shared, tmp_path / "run", init_weights=str(weights)))
    torch.testing.assert_close(wf.parser.get_parsed_content("network").state_dict(), start.state_dict())
    torch.testing.assert_close(wf.parser.get_parsed_content("ema").model.state_dict(), start.state_dict())
    wf.run()
    wf.finalize()
    trained, meta = load_network(tmp_path / "run" / "lowres_ema.pt", "lowres")
    assert meta["started_from"] == {"weights": "start.pt", "iteration": 9}
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))

    other = build_network("tiny", "lowres", context_dim=384, width=16)
    wider = save_network(tmp_path / "wider.pt", other, other.config, "lowres", text_encoder="minilm")
    sr = build_network("tiny", "sr")
    sr_weights = save_network(tmp_path / "sr.pt", sr, sr.config, "sr")
    for path, message in (
        (wider, "wider.pt holds a different network (width differ): set preset and network_overrides"),
        (sr_weights, "sr.pt holds sr weights, but lowres weights are needed here"),
        (tmp_path / "none.pt", "no lowres weights at " + str(tmp_path / "none.pt") + ": init_weights takes a .pt"),
    ):
        with pytest.raises(Exception) as raised:
            workflow(TRAIN, overrides(shared, tmp_path / "bad", init_weights=str(path)))
        assert message in causes(raised.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("config", [TRAIN, TRAIN_SR])
def test_warm_up_counts_optimizer_steps(config):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    parser.update({"lr_warmup_iterations": 3, "accumulation_steps": 2})
    assert parser.get_parsed_content("lr_scheduler#total_iters") == 6  # 3 optimizer steps of 2 iterations
    assert parser.get_parsed_content("lr_scheduler#start_factor") == pytest.approx(1 / 6)


@pytest.mark.parametrize("config", [TRAIN, TRAIN_SR])
def test_channel_loss_weights_reach_the_loss_and_default_to_plain_mse(config):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    assert parser.get_parsed_content("loss").channel_weights is None  # the official loss
    parser.update({"channel_loss_weights": [1, 1, 20, 10]})
    assert parser.get_parsed_content("loss", lazy=False).channel_weights.tolist() == [1, 1, 20, 10]
    parser.update({"channel_loss_weights": [1, -1, 1, 1]})
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("loss", lazy=False)
    assert "channel_weights must be one finite weight >= 0 per channel" in causes(raised.value)


def test_cache_on_device_trains_exactly_as_the_disk_cache(shared, tmp_path):
    """Holding the stage-1 set on the device (GPU runs; here CPU memory) changes where the items live, not what the
    network sees: the same seed gives the same weights after two epochs."""
    weights = {}
    for on_device in (False, True):
        settings = overrides(shared, tmp_path / str(on_device), max_epochs=2, cache_on_device=on_device)
        wf = workflow(TRAIN, settings)
        loader = wf.parser.get_parsed_content("train#dataloader")
        assert isinstance(loader.dataset, DeviceCachedDataset) == on_device
        assert loader.num_workers == 0
        wf.run()
        weights[on_device] = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("config", [TRAIN, TRAIN_SR])
def test_flags_typed_on_the_command_line_are_read_as_booleans(config):
    """``--amp false`` reaches the config as the string 'false' (fire keeps lower-case words as text), which is
    truthy: every flag goes through parse_bool, so it means False, and a word that is no flag fails in one line."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    for text, value in (("false", False), ("true", True), ("False", False), (True, True)):
        parser.update({"amp": text, "resume": text})
        assert parser.get_parsed_content("flags#amp", lazy=False) is value
        assert parser.get_parsed_content("flags#resume", lazy=False) is value
    parser.update({"amp": "maybe"})
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("flags#amp", lazy=False)
    assert "--amp must be true or false, got 'maybe'" in causes(raised.value)
