"""Training handlers on a tiny regression trainer: resume is exact, NaN stops, EMA and clipping behave."""

import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer

from scripts.engines import (
    AtomicCheckpointSaver,
    EMAHandler,
    GradientClipHandler,
    NaNGuard,
    ResumeFromLatest,
    RNGState,
    latest_checkpoint,
)


def fixed_batches():
    """Three fixed batches (one epoch); the randomness of training is drawn in prepare_batch, as diffusion noise is."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        x = torch.randn(4, 3, generator=generator)
        batches.append({"image": x, "label": x.sum(1, keepdim=True)})
    return batches


def noisy_targets(batch, device, non_blocking, **kwargs):
    """Prepare-batch drawing from the global torch RNG, so an exact resume must restore it."""
    return batch["image"].to(device), batch["label"].to(device) + 0.1 * torch.randn_like(batch["label"])


def make_trainer(out_dir, max_epochs, handlers=(), accumulation_steps=1, lr=0.05):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(fixed_batches(), batch_size=None)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        epoch_length=3,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        accumulation_steps=accumulation_steps,
        prepare_batch=noisy_targets,
    )
    ema = EMAHandler(net, decay=0.9, start_iteration=2)
    ema.attach(trainer)
    save_dict = {"network": net, "ema": ema, "optimizer": opt, "trainer": trainer, "rng": RNGState()}
    for handler in handlers:
        handler.attach(trainer)
    if out_dir is not None:
        ResumeFromLatest(out_dir, save_dict).attach(trainer)
        AtomicCheckpointSaver(out_dir, save_dict, save_interval=3, n_saved=2).attach(trainer)
    return trainer, net, opt, ema


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    reference, ref_net, ref_opt, ref_ema = make_trainer(None, max_epochs=4)
    reference.run()

    first, *_ = make_trainer(tmp_path, max_epochs=2)  # "killed" after 6 iterations
    first.run()
    assert latest_checkpoint(tmp_path).name == "checkpoint_6.pt"
    resumed, net, opt, ema = make_trainer(tmp_path, max_epochs=4)  # the same command, run again
    resumed.run()

    assert resumed.state.iteration == 12
    torch.testing.assert_close(net.state_dict(), ref_net.state_dict())
    torch.testing.assert_close(ema.model.state_dict(), ref_ema.model.state_dict())
    torch.testing.assert_close(opt.state_dict()["state"], ref_opt.state_dict()["state"])
    # only complete files, the last two kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_12.pt", "checkpoint_9.pt"]


def test_nan_loss_stops_with_the_iteration_and_saves_nothing(tmp_path):
    class PoisonAtThree:
        def attach(self, engine):
            @engine.on(__import__("ignite").engine.Events.ITERATION_STARTED)
            def poison(engine):
                if engine.state.iteration == 3:
                    engine.network.weight.data.fill_(float("nan"))

    trainer, *_ = make_trainer(tmp_path, max_epochs=2, handlers=[PoisonAtThree(), NaNGuard()])
    with pytest.raises(FloatingPointError, match="at iteration 3"):
        trainer.run()
    assert latest_checkpoint(tmp_path) is None


def test_ema_follows_then_averages():
    trainer, net, _, ema = make_trainer(None, max_epochs=1)
    snapshots = []
    trainer.add_event_handler(
        __import__("ignite").engine.Events.ITERATION_COMPLETED,
        lambda e: snapshots.append((net.weight.detach().clone(), ema.model.weight.detach().clone())),
    )
    trainer.run()
    live1, ema1 = snapshots[0]
    torch.testing.assert_close(ema1, live1)  # before start_iteration the EMA is the live network
    live3, ema3 = snapshots[2]
    expected = 0.9 * snapshots[1][1] + 0.1 * live3
    torch.testing.assert_close(ema3, expected)
    with pytest.raises(ValueError, match="decay"):
        EMAHandler(net, decay=1.0)


def test_gradient_clipping_caps_the_norm_only_on_step_iterations():
    norms = []

    class RecordNorm:
        def attach(self, engine):
            engine.add_event_handler(
                __import__("monai").engines.utils.IterationEvents.BACKWARD_COMPLETED,
                lambda e: norms.append(
                    (
                        e.state.iteration,
                        torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in e.network.parameters()])),
                    )
                ),
            )

    trainer, *_ = make_trainer(
        None, max_epochs=1, handlers=[GradientClipHandler(1e-3), RecordNorm()], accumulation_steps=2
    )
    trainer.run()
    by_iteration = dict(norms)
    assert by_iteration[1] > 1e-3  # iteration 1 accumulates: gradients left alone
    assert by_iteration[2] <= 1e-3 * (1 + 1e-5)  # iteration 2 steps: clipped
    assert by_iteration[3] <= 1e-3 * (1 + 1e-5)  # last iteration of the epoch steps too
    with pytest.raises(ValueError, match="max_norm"):
        GradientClipHandler(0)


def test_rng_state_round_trip():
    state = RNGState().state_dict()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    RNGState().load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


class OnAccelerator:
    """Stands for a tensor that ``torch.load(map_location="cuda")`` put on a GPU: the generators take it only
    through ``.cpu()`` (``torch.set_rng_state`` refuses a CUDA tensor with "RNG state must be a torch.ByteTensor")."""

    def __init__(self, tensor):
        self.tensor = tensor

    def cpu(self):
        return self.tensor

    def __len__(self):
        return len(self.tensor)


def test_rng_state_restores_from_a_checkpoint_mapped_to_the_gpu():
    state = RNGState().state_dict()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    mapped = {key: OnAccelerator(value) if isinstance(value, torch.Tensor) else value for key, value in state.items()}
    RNGState().load_state_dict(mapped)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_state_round_trip_through_a_cuda_mapped_checkpoint(tmp_path):
    torch.save({"rng": RNGState().state_dict()}, tmp_path / "checkpoint.pt")
    expected = torch.rand(3)
    loaded = torch.load(tmp_path / "checkpoint.pt", map_location="cuda", weights_only=True)
    RNGState().load_state_dict(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_rng_state_gives_other_ranks_their_own_streams_on_resume(monkeypatch):
    import scripts.engines.checkpoint as checkpoint

    state = RNGState().state_dict()
    draws = {}
    for rank in (0, 1, 2, 1):
        monkeypatch.setattr(checkpoint, "_process_rank", lambda rank=rank: rank)
        RNGState().load_state_dict(state)
        draw = (torch.rand(3), np.random.rand(3))
        if rank in draws:  # the same rank resumes the same way
            assert torch.equal(draw[0], draws[rank][0]) and np.array_equal(draw[1], draws[rank][1])
        draws[rank] = draw
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[1][0], draws[2][0])
    assert not np.array_equal(draws[0][1], draws[1][1])


def test_saver_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="save_interval"):
        AtomicCheckpointSaver(tmp_path, {}, save_interval=0)
