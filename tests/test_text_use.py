"""The text-use probe: the loss gap between a finding's prompt and its negation on cases that have the finding."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.evaluation.__main__ import main
from scripts.evaluation.adherence import load_pairs
from scripts.evaluation.text_use import gap_test, loss_by_text, text_use_markdown, text_use_study
from scripts.networks import build_network, save_network

PAIRS = "configs/adherence_pairs_phantom.json"


def _cases(batch: int = 3) -> torch.Tensor:
    return torch.rand((batch, 4, 4, 8, 8), generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_a_network_that_reads_the_finding_has_a_positive_gap():
    x0 = _cases()

    def reads_text(x_t, timesteps, context=None, drop_context=None):
        # a perfect denoiser whose confidence is the context's mean: 0.9 for the finding, 0 for the negation
        weight = context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) if context is not None else 0.5
        return x0 * weight

    contexts = {"finding": torch.full((3, 5, 2), 0.9), "negation": torch.zeros(3, 5, 2), "null": None}
    losses = loss_by_text(reads_text, x0, contexts, times=(0.5,), noises=1)
    assert set(losses) == {"finding", "negation", "null"} and losses["finding"].shape == (3,)
    assert (losses["finding"] < losses["null"]).all() and (losses["null"] < losses["negation"]).all()
    result = gap_test(losses["finding"], losses["negation"])
    assert result["gap"] == pytest.approx(99.0)  # (1 - 0.01) / 0.01 on every case
    assert result["p"] < 1e-6 and len(result["gap_per_case"]) == 3


def test_a_network_that_ignores_the_text_has_no_gap():
    x0 = _cases()

    def ignores_text(x_t, timesteps, context=None, drop_context=None):
        return x_t * 0.5

    contexts = {"finding": torch.ones(3, 5, 2), "negation": torch.zeros(3, 5, 2)}
    losses = loss_by_text(ignores_text, x0, contexts, noises=2)
    assert torch.equal(losses["finding"], losses["negation"])  # same times and noises for every text
    assert gap_test(losses["finding"], losses["negation"]) == {"gap": 0.0, "gap_per_case": [0.0] * 3, "p": 1.0}


def test_bad_arguments_are_named():
    x0 = _cases()
    with pytest.raises(ValueError, match="times must be fractions"):
        loss_by_text(lambda *a, **k: a[0], x0, {"null": None}, times=(0.0,))
    with pytest.raises(ValueError, match="noises must be >= 1"):
        loss_by_text(lambda *a, **k: a[0], x0, {"null": None}, noises=0)
    with pytest.raises(ValueError, match="at least 2 cases"):
        gap_test(torch.ones(1), torch.ones(1))


def test_study_on_exported_weights_and_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    network = build_network("tiny", "lowres", context_dim=384)
    data = {"spacing": [10.0, 10.0, 10.0], "size": 32, "size_mode": "pad_crop"}
    weights = save_network(tmp_path / "w.pt", network, network.config, "lowres", text_encoder="minilm", data=data)

    results = text_use_study(weights, load_pairs(PAIRS), num=2, size=32, seed=3, times=(0.5,), noises=1)
    assert [r["name"] for r in results] == ["effusion", "cardiomegaly"]
    for r in results:
        assert set(r["loss"]) == {"own", "finding", "negation", "null"} and r["cases"] == 2
        assert all(value > 0 for value in r["loss"].values()) and 0.0 <= r["p"] <= 1.0
    table = text_use_markdown(results)
    assert "| effusion | 2 × effusion:bilateral:large |" in table

    out = tmp_path / "use.json"
    main(["text_use", "--weights", str(weights), "--num", "2", "--size", "32", "--noises", "1", "--json", str(out)])
    assert "| cardiomegaly | 2 × cardiomegaly:large |" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["results"]) == 2

    no_phantom = tmp_path / "pairs.json"
    pairs = json.loads(open(PAIRS).read())["pairs"]
    no_phantom.write_text(json.dumps([{k: v for k, v in p.items() if k != "phantom_findings"} for p in pairs]))
    with pytest.raises(SystemExit, match="error: no prompt pair names its phantom_findings"):
        main(["text_use", "--weights", str(weights), "--prompt_pairs", str(no_phantom)])
    with pytest.raises(SystemExit, match="already exists"):
        main(["text_use", "--weights", str(weights), "--num", "2", "--size", "32", "--json", str(out)])
