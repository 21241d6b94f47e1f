"""Text encoder, backends, position extension, embedding cache and CLI (scripts/text/).

Most tests use a tiny randomly initialised BERT with the MiniLM tokenizer so they run in seconds; one test loads the
real offline default (all-MiniLM-L6-v2).
"""

import json
import logging

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from scripts.text.__main__ import main as cli_main
from scripts.text.backends import ModelNotFoundError, extend_position_embeddings, load_tokenizer, resolve_model
from scripts.text.cache import EmbeddingCache
from scripts.text.encoder import ReportEncoder
from scripts.text.reports import ReportError

REPORTS = [
    "FINDINGS: There is a small right pleural effusion. IMPRESSION: Right effusion.",
    "Findings: Moderate cardiomegaly.\nImpression: Cardiomegaly.",
    "No acute cardiopulmonary abnormality.",
]


def tiny_config(positions: int = 512) -> BertConfig:
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def tiny_encoder(tokenizer):
    torch.manual_seed(0)
    return ReportEncoder.from_modules(BertModel(tiny_config()), tokenizer, "tiny", device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def cxr_style_folder(tmp_path_factory, tokenizer):
    """A folder laid out like microsoft/BiomedVLP-CXR-BERT-specialized: model_type cxr-bert, remote-code auto_map."""
    folder = tmp_path_factory.mktemp("cxr_bert_like")
    torch.manual_seed(1)
    BertForMaskedLM(tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="cxr-bert", auto_map={"AutoModel": "modeling_cxrbert.CXRBertModel"}, projection_size=16)
    config["architectures"] = ["CXRBertModel"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_shapes_dtype_and_padding_to_192(tiny_encoder):
    features = tiny_encoder.encode(REPORTS)
    assert features.shape == (3, 192, 32) and features.dtype == torch.float32
    assert tiny_encoder.encode(REPORTS[0]).shape == (1, 192, 32)
    assert tiny_encoder.hidden_size == 32 and tiny_encoder.max_tokens == 192


def test_deterministic_and_independent_of_batching(tiny_encoder):
    first = tiny_encoder.encode(REPORTS)
    assert torch.equal(first, tiny_encoder.encode(REPORTS))
    alone = torch.cat([tiny_encoder.encode(r) for r in REPORTS])
    torch.testing.assert_close(first, alone, atol=1e-4, rtol=1e-4)
    # sections are what is encoded: headers and spacing do not change the features
    same = tiny_encoder.encode("findings - There is a small right pleural effusion.\n\nimpression - Right effusion.")
    torch.testing.assert_close(first[:1], same)


def test_configurable_token_count_and_context(tokenizer):
    torch.manual_seed(0)
    network = BertModel(tiny_config())
    short = ReportEncoder.from_modules(network, tokenizer, "tiny", max_tokens=16, device="cpu")
    assert short.encode(REPORTS).shape == (3, 16, 32)
    wide = ReportEncoder.from_modules(network, tokenizer, "tiny", max_tokens=16, context_tokens=64, device="cpu")
    assert wide.encode(REPORTS).shape == (3, 16, 32)
    with pytest.raises(ValueError, match="max_positions"):
        ReportEncoder.from_modules(network, tokenizer, "tiny", context_tokens=1024)
    with pytest.raises(ValueError, match="max_tokens <= context_tokens"):
        ReportEncoder.from_modules(network, tokenizer, "tiny", max_tokens=64, context_tokens=32)


def test_bad_inputs(tiny_encoder, caplog):
    with pytest.raises(ReportError, match="empty"):
        tiny_encoder.encode(["Findings: ok.", "  \n "])
    with pytest.raises(TypeError):
        tiny_encoder.encode([None])
    long_report = "Findings: " + " ".join(["There is a small nodule in the right upper lobe."] * 1200)  # 12k words
    weird = bytes(range(256)) * 8 + "Impression: caf\u00e9 \u80ba \U0001f600".encode()
    with caplog.at_level(logging.WARNING, logger="scripts.text.encoder"):
        features = tiny_encoder.encode([long_report, weird])
    assert features.shape == (2, 192, 32) and torch.isfinite(features).all()
    assert "truncated" in caplog.text and "the limit is 192" in caplog.text


def test_missing_models_name_where_to_put_them(tmp_path):
    with pytest.raises(ModelNotFoundError, match="folder not found"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="hf download"):
        resolve_model("nobody-has/this-model-id")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(tmp_path / "empty")


def test_offline_default_minilm():
    encoder = ReportEncoder("minilm", device="cpu")
    assert encoder.hidden_size == 384 and encoder.model_id.startswith("all-MiniLM-L6-v2-")
    features = encoder.encode(REPORTS[:2])
    assert features.shape == (2, 192, 384)
    assert not torch.allclose(features[0], features[1])


def test_cxr_bert_style_folder_loads_without_remote_code(cxr_style_folder):
    encoder = ReportEncoder(cxr_style_folder, context_tokens=1024, max_positions=1024, device="cpu")
    assert encoder.network.config.max_position_embeddings == 1024
    assert encoder.encode(REPORTS).shape == (3, 192, 32)
    assert encoder.model_id.startswith(cxr_style_folder.name)


def test_extend_position_embeddings_like_cxr_bert():
    torch.manual_seed(0)
    model = BertModel(tiny_config(positions=16)).eval()
    old = model.embeddings.position_embeddings.weight.detach().clone()
    ids = torch.randint(1000, 2000, (2, 12))
    before = model(input_ids=ids).last_hidden_state

    assert extend_position_embeddings(model, 40) is model
    table = model.embeddings.position_embeddings.weight
    assert table.shape == (40, 32) and model.config.max_position_embeddings == 40
    assert torch.equal(table[:16], old)
    assert 0.005 < table[16:].std() < 0.05  # N(0, initializer_range = 0.02)
    assert model.embeddings.position_ids.shape == (1, 40) and model.embeddings.token_type_ids.shape == (1, 40)
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, before)  # short inputs are unchanged
    assert model(input_ids=torch.randint(1000, 2000, (1, 40))).last_hidden_state.shape == (1, 40, 32)

    tiled = extend_position_embeddings(BertModel(tiny_config(positions=16)), 40, init="tile")
    weight = tiled.embeddings.position_embeddings.weight
    assert torch.equal(weight[16:32], weight[:16]) and torch.equal(weight[32:], weight[:8])
    with pytest.raises(ValueError, match="shrink"):
        extend_position_embeddings(model, 8)
    with pytest.raises(ValueError, match="unknown init"):
        extend_position_embeddings(model, 80, init="interpolate")


def test_extended_model_saves_and_loads(tmp_path):
    model = extend_position_embeddings(BertForMaskedLM(tiny_config(positions=16)), 48)
    model.save_pretrained(tmp_path)
    loaded = BertModel.from_pretrained(tmp_path)
    assert loaded.config.max_position_embeddings == 48
    assert torch.equal(loaded.embeddings.position_embeddings.weight, model.bert.embeddings.position_embeddings.weight)


class CountingEncoder:
    """Wraps an encoder and counts how many texts reach the network."""

    def __init__(self, encoder):
        self.inner, self.encoded = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_prepared(self, texts):
        self.encoded += len(texts)
        return self.inner.encode_prepared(texts)


def test_cache_hits_on_second_call(tmp_path, tiny_encoder):
    counting = CountingEncoder(tiny_encoder)
    cache = EmbeddingCache(tmp_path, counting)
    first = cache.get(REPORTS + [REPORTS[0]])
    assert counting.encoded == 3 and first.shape == (4, 192, 32) and first.dtype == torch.float32
    second = cache.get(list(reversed(REPORTS)))
    assert counting.encoded == 3 and cache.hits == 4 and cache.misses == 3
    assert torch.equal(second, first[:3].flip(0))  # float16 on disk: the first call already returns stored values
    files = sorted(p.name for p in cache.folder.iterdir())
    assert len(files) == 4 and "meta.json" in files and not [f for f in files if f.startswith(".")]
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["model_id"] == "tiny" and meta["max_tokens"] == 192 and meta["dtype"] == "float16"
    assert cache.key == "tiny_t192_c192"


def test_cache_float32_matches_encoder_and_read_only_use(tmp_path, tiny_encoder):
    cache = EmbeddingCache(tmp_path, tiny_encoder, dtype="float32")
    assert torch.equal(cache.get(REPORTS), tiny_encoder.encode(REPORTS))
    reader = EmbeddingCache(tmp_path, key=cache.key)
    assert torch.equal(reader.get(REPORTS[1]), cache.get(REPORTS[1]))
    with pytest.raises(KeyError, match="python -m scripts.text encode"):
        reader.get("Findings: never seen.")
    with pytest.raises(ValueError, match="needs its key"):
        EmbeddingCache(tmp_path)


def test_damaged_cache_file_is_encoded_again(tmp_path, tiny_encoder):
    cache = EmbeddingCache(tmp_path, tiny_encoder)
    good = cache.get(REPORTS[0])
    cache.path_for(REPORTS[0]).write_bytes(b"not a tensor")
    assert torch.equal(cache.get(REPORTS[0]), good)
    assert cache.misses == 2


def test_cli_encode_fills_the_cache(tmp_path, cxr_style_folder, capsys):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r0.txt").write_text(REPORTS[0], encoding="utf-8")
    datalist = {
        "training": [
            {"image": "a.nii.gz", "report_file": "reports/r0.txt"},
            {"image": "b.nii.gz", "report": REPORTS[1]},
        ],
        "validation": [{"image": "c.nii.gz", "report": REPORTS[2]}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist), encoding="utf-8")
    args = ["encode", "--datalist", str(tmp_path / "datalist.json"), "--out", str(tmp_path / "cache")]
    args += ["--model", str(cxr_style_folder), "--device", "cpu"]
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reports"] == 3 and summary["encoded"] == 3 and summary["hidden_size"] == 32
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoded"] == 0 and summary["already_cached"] == 3
    reader = EmbeddingCache(tmp_path / "cache", key=summary["key"])
    assert reader.get(REPORTS).shape == (3, 192, 32)
    datalist["training"].append({"image": "d.nii.gz", "report": " \n "})
    (tmp_path / "datalist.json").write_text(json.dumps(datalist), encoding="utf-8")
    assert cli_main(args) == 2
    assert "empty" in capsys.readouterr().err
    assert cli_main(["encode", "--datalist", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
