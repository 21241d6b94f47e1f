"""The text-encoder fine-tuning recipe (scripts/text/finetune.py, configs/train_text_encoder.json).

The bundle-config test runs 20 training steps of a tiny random BERT on generated reports, resumes it, and loads the
exported folder with ``ReportEncoder``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from transformers import BertConfig, BertForMaskedLM

from scripts.text.backends import load_tokenizer
from scripts.text.encoder import ReportEncoder
from scripts.text.finetune import (
    IGNORE_INDEX,
    PairedSectionDataset,
    PretrainingLoss,
    PretrainingModel,
    impression_key,
    mask_tokens,
    masked_lm_loss,
    paired_section_loss,
    parameter_groups,
    prepare_pretraining_batch,
    section_pair,
)
from scripts.text.reports import ReportError, normalise_text
from scripts.text.samples import generate_reports

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_text_encoder.json"


def tiny_mlm() -> BertForMaskedLM:
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertForMaskedLM(config)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    tiny_mlm().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_section_pair_uses_sections_or_sentence_halves():
    assert section_pair("Findings: A nodule. Impression: Nodule.") == ("A nodule.", "Nodule.")
    assert section_pair("There is cardiomegaly. No effusion. Lungs are clear.") == (
        "There is cardiomegaly. No effusion.",
        "Lungs are clear.",
    )
    assert section_pair("Normal chest") is None


def test_mask_tokens_follows_bert_rates():
    rng = np.random.default_rng(0)
    ids = torch.arange(1000, 11000)
    maskable = torch.ones(10000, dtype=torch.bool)
    maskable[:100] = False
    masked, labels = mask_tokens(ids, maskable, mask_token_id=103, vocab_size=30522, rng=rng)
    chosen = labels != IGNORE_INDEX
    assert 0.13 < chosen.float().mean() < 0.17 and not chosen[:100].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    share_mask = (masked[chosen] == 103).float().mean()
    share_kept = (masked[chosen] == ids[chosen]).float().mean()
    assert 0.75 < share_mask < 0.85 and 0.06 < share_kept < 0.14
    one = mask_tokens(ids[:5], torch.ones(5, dtype=torch.bool), 103, 30522, np.random.default_rng(1), 1e-9)[1]
    assert (one != IGNORE_INDEX).sum() == 1  # never a sample without a target


def test_paired_section_dataset(tokenizer):
    reports = generate_reports(40, seed=0) + ["Normal chest"]  # the last cannot be paired and is skipped
    data = PairedSectionDataset(reports, tokenizer, max_length=96, seed=0, fixed=True)
    assert len(data) == 40
    items = [data[i] for i in range(len(data))]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(items, [data[i] for i in range(40)]))
    paired = torch.stack([item["paired"] for item in items])
    assert 10 <= int(paired.sum()) <= 30
    for index, item in enumerate(items):
        assert item["input_ids"].shape == (96,) and item["token_type_ids"].max() == 1
        ids = torch.where(item["mlm_labels"] != IGNORE_INDEX, item["mlm_labels"], item["input_ids"])
        second = tokenizer.decode(ids[item["token_type_ids"].bool() & item["attention_mask"].bool()][:-1])
        own = normalise_text(data.pairs[index][1]).lower()
        own_tokens = tokenizer.decode(tokenizer(own, add_special_tokens=False)["input_ids"])
        assert (second == own_tokens) == bool(item["paired"])
    with pytest.raises(ReportError, match="two different Impressions"):
        PairedSectionDataset(["Findings: a. Impression: b."] * 3, tokenizer)


def test_both_losses_fall_when_fitting_one_batch(tokenizer):
    torch.manual_seed(0)
    data = PairedSectionDataset(generate_reports(8, seed=2), tokenizer, max_length=64, fixed=True)
    batch = torch.utils.data.default_collate([data[i] for i in range(8)])
    inputs, targets, _, kwargs = prepare_pretraining_batch(batch, "cpu")
    model = PretrainingModel(mlm_model=tiny_mlm())
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=3e-3, head_lr=1e-2))  # the recipe: a faster new head
    loss_fn = PretrainingLoss()
    losses = []
    for _ in range(15):
        out = model(inputs, **kwargs)
        loss = loss_fn(out, targets)
        losses.append((masked_lm_loss(out, targets).item(), paired_section_loss(out, targets).item()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    first, last = np.mean(losses[:3], axis=0), np.mean(losses[-3:], axis=0)
    assert last[0] < 0.85 * first[0] and last[1] < 0.85 * first[1], losses
    model.eval()
    full = model(inputs, attention_mask=kwargs["attention_mask"], token_type_ids=kwargs["token_type_ids"])
    assert full["mlm_logits"].shape == (8, 64, 30522) and full["pair_logits"].shape == (8, 2)
    torch.testing.assert_close(masked_lm_loss(full, targets), masked_lm_loss(model(inputs, **kwargs), targets))


def _workflow(output_dir: Path, tiny_folder: Path, epochs: int) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(CONFIG),
        workflow_type="train",
        run_id="training",
        output_dir=str(output_dir),
        base_model=str(tiny_folder),
        num_generated_train=40,
        num_generated_val=8,
        batch_size=2,
        max_length=64,
        max_epochs=epochs,
        lr=1e-3,
        save_interval=10,
    )
    workflow.initialize()
    return workflow


@pytest.mark.slow
def test_bundle_config_trains_20_steps_resumes_and_exports(tmp_path, tiny_folder):
    workflow = _workflow(tmp_path, tiny_folder, epochs=1)
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 20
    metrics = trainer.state.metrics
    assert {"train_pair_acc", "train_mlm_loss", "train_pair_loss"} <= set(metrics)
    assert np.isfinite(metrics["train_mlm_loss"]) and np.isfinite(metrics["train_pair_loss"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_10.pt", "checkpoint_20.pt"]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    workflow.finalize()

    export = tmp_path / "encoder"
    assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".encoder")]  # no temporary folders left
    encoder = ReportEncoder(export, device="cpu")
    assert encoder.encode("Findings: Small left effusion. Impression: Effusion.").shape == (1, 192, 32)

    resumed = _workflow(tmp_path, tiny_folder, epochs=2)
    trainer = resumed.parser.get_parsed_content("train#trainer")
    steps = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: steps.append(engine.state.iteration))
    resumed.run()
    assert steps == list(range(21, 41)) and trainer.state.epoch == 2  # continued from iteration 20, not restarted
    resumed.finalize()


def test_swaps_take_an_impression_with_different_content(tokenizer):
    """A rewording of the report's own Impression is no negative example: swaps pick different content."""
    reports = [
        "Findings: Fluid in the right pleural space. Impression: No pleural effusion on the left.",
        "Findings: Clear lungs. Impression: No left pleural effusion.",  # same words, other order
        "Findings: Enlarged heart. Impression: Cardiomegaly with enlarged cardiac silhouette.",
    ]
    data = PairedSectionDataset(reports, tokenizer, max_length=48, seed=0, swap_probability=1.0)
    partners = {data._swap_partner(0, np.random.default_rng(seed)) for seed in range(30)}
    assert partners == {2}
    with pytest.raises(ValueError, match="max_overlap"):
        PairedSectionDataset(reports, tokenizer, max_overlap=0.0)


def test_impressions_that_state_no_finding_are_one_content(tokenizer):
    """ "Normal CT of the chest." and "No acute cardiopulmonary abnormality." say the same: never swapped."""
    assert impression_key("Normal CT of the chest.") == impression_key("No acute  cardiopulmonary abnormality.")
    assert impression_key("No pleural effusion.") != impression_key("Normal CT of the chest.")
    reports = [
        "Findings: Clear lungs. Impression: Normal CT of the chest.",
        "Findings: Clear lungs, normal heart. Impression: No acute cardiopulmonary abnormality.",
        "Findings: Enlarged heart. Impression: Severe cardiomegaly.",
    ]
    data = PairedSectionDataset(reports, tokenizer, max_length=48, seed=0, swap_probability=1.0)
    assert {data._swap_partner(0, np.random.default_rng(seed)) for seed in range(30)} == {2}
    assert {data._swap_partner(2, np.random.default_rng(seed)) for seed in range(30)} == {0, 1}
