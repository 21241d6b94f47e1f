"""CT-CLIP for the CT-CLIP score: the official architecture's checkpoint layout, its behaviours, strict loading,
preprocessing and the score, on tiny random networks of the real architecture (the checkpoint itself is gated)."""

import json

import numpy as np
import pytest
import torch
from transformers import BertConfig

from scripts.evaluation.ctclip import (
    INPUT_SHAPE,
    build_ctclip,
    clip_score,
    load_ctclip,
    preprocess,
)
from scripts.evaluation.features import MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TEXT = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip
TINY_CTVIT = dict(
    dim=16, codebook_size=32, image_size=40, patch_size=20, temporal_patch_size=10, spatial_depth=2,
    temporal_depth=2, dim_head=4, heads=2,
)  # fmt: skip


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = build_ctclip(BertConfig(**TINY_TEXT), TINY_CTVIT, dim_latent=8)
    with torch.no_grad():  # nothing trivially zero or one (layer-norm betas, codebook) so every path shows
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.numel():
                tensor.copy_(torch.randn_like(tensor) * 0.5)
    return model.eval()


def test_official_size_has_the_checkpoint_layout():
    """Keys and shapes of the official model (ibrahimethemhamamci/CT-CLIP a2a155c: CTViT, CTCLIP, BertModel of
    CXR-BERT's config; 361 tensors), built on the meta device."""
    config = BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    )
    with torch.device("meta"):
        state = build_ctclip(config).state_dict()
    assert len(state) == 361
    assert sum(k.startswith("visual_transformer.") for k in state) == 157
    assert sum(k.startswith("text_transformer.") for k in state) == 199
    expected = {
        "temperature": (),
        "to_text_latent.weight": (512, 768),
        "to_visual_latent.weight": (512, 294912),
        "to_visual_latent_extra.weight": (512, 294912),
        "visual_transformer.to_patch_emb.1.weight": (4000,),
        "visual_transformer.to_patch_emb.2.weight": (512, 4000),
        "visual_transformer.to_patch_emb_first_frame.2.weight": (512, 400),
        "visual_transformer.spatial_rel_pos_bias.net.0.0.weight": (512, 2),
        "visual_transformer.spatial_rel_pos_bias.net.2.weight": (8, 512),
        "visual_transformer.enc_spatial_transformer.layers.0.0.dsconv.weight": (512, 1, 3, 3, 3),
        "visual_transformer.enc_spatial_transformer.layers.0.1.null_kv": (8, 0, 32),
        "visual_transformer.enc_spatial_transformer.layers.0.1.norm.beta": (512,),
        "visual_transformer.enc_spatial_transformer.layers.0.1.context_norm.gamma": (512,),
        "visual_transformer.enc_spatial_transformer.layers.0.1.to_kv.weight": (512, 512),
        "visual_transformer.enc_temporal_transformer.layers.3.3.1.weight": (2730, 512),
        "visual_transformer.enc_temporal_transformer.layers.3.3.4.weight": (512, 1365),
        "visual_transformer.enc_temporal_transformer.norm_out.beta": (512,),
        "visual_transformer.vq._codebook.embed": (1, 8192, 512),
        "visual_transformer.vq._codebook.cluster_size": (1, 8192),
        "visual_transformer.to_pixels.0.weight": (4000, 512),
        "text_transformer.embeddings.word_embeddings.weight": (30522, 768),
        "text_transformer.pooler.dense.weight": (768, 768),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


def test_image_latent_averages_tokens_over_depth_only_and_codes_are_stored_vectors():
    model = _tiny()
    volume = torch.rand(2, 1, 20, 40, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens = model.visual_transformer(volume)
        latents = model.encode_image(volume)
    assert tokens.shape == (2, 2, 2, 2, 16)
    codebook = model.visual_transformer.vq._codebook.embed[0]
    assert all(any(torch.equal(v, c) for c in codebook) for v in tokens.reshape(-1, 16))  # not renormalised
    by_hand = torch.nn.functional.normalize(model.to_visual_latent(tokens.mean(dim=1).flatten(1)), dim=-1)
    torch.testing.assert_close(latents, by_hand)
    torch.testing.assert_close(latents.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="prepare CTs with scripts.evaluation.ctclip.preprocess"):
        model.visual_transformer(volume[..., :20])


def test_text_latent_is_the_projected_cls_token_and_logits_scale_the_cosine():
    model = _tiny()
    ids = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 0, 0
    volume = torch.rand(2, 1, 20, 40, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        cls = model.text_transformer(input_ids=ids, attention_mask=mask)[0][:, 0]
        logits = model(ids, mask, volume)
        image = model.encode_image(volume)
    torch.testing.assert_close(text, torch.nn.functional.normalize(model.to_text_latent(cls), dim=-1))
    torch.testing.assert_close(logits, (text * image).sum(-1) * model.temperature.exp())


def test_checkpoint_loads_strictly_with_clear_errors(tmp_path):
    model = _tiny()
    config = tmp_path / "cxr-bert" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"model_type": "bert", **TINY_TEXT}))
    state = dict(model.state_dict())
    state["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]  # older transformers saved it
    torch.save(state, tmp_path / "ct_clip.pt")
    loaded = load_ctclip(tmp_path / "ct_clip.pt", config, ctvit=TINY_CTVIT, dim_latent=8)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    del state["to_visual_latent_extra.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="partial.pt does not fit CT-CLIP: missing \\['to_visual_latent_extra"):
        load_ctclip(tmp_path / "partial.pt", config, ctvit=TINY_CTVIT, dim_latent=8)
    with pytest.raises(MissingWeightsError, match="ct_clip weights not found at .*models/ct_clip/CT-CLIP_v2.pt"):
        load_ctclip(text_config=config, large_files=tmp_path / "large_files.yml")
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged.pt"):
        load_ctclip(tmp_path / "damaged.pt", config, ctvit=TINY_CTVIT, dim_latent=8)


def test_preprocess_resamples_clips_scales_and_centres_like_the_official_loader():
    hu = np.full((40, 30, 10), -2000.0, dtype=np.float32)  # 1.5 x 1.5 x 3 mm voxels
    hu[10:30, 5:25, 2:8] = 3000.0
    x = preprocess(hu, (1.5, 1.5, 3.0), shape=(100, 50, 24))
    assert x.shape == (1, 1, 24, 100, 50)  # (B, C, Z, X, Y)
    # resampled to 80 x 60 x 20, then x padded 10 per side, y cropped 5 per side, z padded 2 per side (with -1)
    assert x.min() == -1.0 and x.max() == 1.0
    assert (x[0, 0, :2] == -1).all() and (x[0, 0, :, :10] == -1).all()
    assert x[0, 0, 12, 50, 25] == 1.0 and x[0, 0, 12, 15, 25] == -1.0
    assert INPUT_SHAPE == (480, 480, 240)
    with pytest.raises(ValueError, match="expected an \\(X, Y, Z\\) CT"):
        preprocess(hu[0], (1.0, 1.0))


def test_clip_score_is_a_floored_percentage_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(clip_score(a, b), torch.tensor([100.0, 0.0, 100.0 / 2**0.5]))


def _tokenizer(folder):
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "large", "right", "pleural", "effusion", "no", "normal"]
    (folder / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(100 - len(words))]) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)


def _dataset(root):
    """Two generated volumes with sidecars (prompt, prompt_id) and a real datalist holding the case of one."""
    from scripts.data.io import write_nifti

    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for name, prompt_id, prompt in (("a", "case1", "Large right pleural effusion."), ("b", "case9", "Normal.")):
        write_nifti(root / "gen" / f"{name}_ct.nii.gz", rng.uniform(-1000, 400, (20, 20, 7)), affine, "int16")
        (root / "gen" / f"{name}.json").write_text(json.dumps({"prompt": prompt, "prompt_id": prompt_id}))
    write_nifti(root / "real" / "case1.nii.gz", rng.uniform(-1000, 400, (20, 20, 7)), affine, "int16")
    (root / "real" / "datalist.json").write_text(json.dumps({"validation": [{"id": "case1", "image": "case1.nii.gz"}]}))
    return root / "gen", root / "real" / "datalist.json"


def test_score_folder_pairs_volumes_with_their_reports_and_real_cases(tmp_path):
    from scripts.evaluation.ctclip import image_latent, score_folder, text_latents
    from scripts.evaluation.data import datalist_items, read_ct

    model, tokenizer = _tiny(), _tokenizer(tmp_path)
    generated, datalist = _dataset(tmp_path)
    result = score_folder(model, tokenizer, generated, real_items=datalist_items(datalist, "validation"))
    assert (result["n_volumes"], result["n_i2t"], result["n_i2i"]) == (2, 2, 1)
    latent = image_latent(model, *read_ct(generated / "a_ct.nii.gz"))
    text = text_latents(model, tokenizer, ["Large right pleural effusion."])
    real = image_latent(model, *read_ct(tmp_path / "real" / "case1.nii.gz"))
    assert result["volumes"]["a_ct"]["i2t"] == pytest.approx(float(clip_score(latent, text)[0]))
    assert result["volumes"]["a_ct"]["i2i"] == pytest.approx(float(clip_score(latent, real)[0]))
    assert "i2i" not in result["volumes"]["b_ct"]
    assert result["clip_score_i2i"] == pytest.approx(result["volumes"]["a_ct"]["i2i"])
    assert result["clip_score_mean"] == pytest.approx((result["clip_score_i2t"] + result["clip_score_i2i"]) / 2)


def test_evaluation_part_reports_the_score_and_needs_the_checkpoint(tmp_path, monkeypatch):
    from scripts.evaluation import ctclip
    from scripts.evaluation.run import run_evaluation

    generated, datalist = _dataset(tmp_path)
    folder = tmp_path / "cxr-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **TINY_TEXT}))
    with pytest.raises(MissingWeightsError, match="ct_clip weights not found"):
        run_evaluation(tmp_path / "out", ["ctclip"], generated, large_files=tmp_path / "large_files.yml")
    torch.save(_tiny().state_dict(), tmp_path / "ct_clip.pt")
    tokenizer = _tokenizer(folder)
    tiny = _tiny()
    monkeypatch.setattr(ctclip, "load_ctclip", lambda *args, **kwargs: tiny)  # the official size takes 1.7 GB
    monkeypatch.setattr(ctclip, "load_tokenizer", lambda *args, **kwargs: tokenizer)
    out = run_evaluation(
        tmp_path / "out", ["ctclip"], generated, real_datalist=datalist, progress=False,
        ctclip_weights=tmp_path / "ct_clip.pt", ctclip_text_config=folder / "config.json",
    )  # fmt: skip
    assert out["results"]["ctclip"]["n_i2i"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        "## CT-CLIP score (VLM3D text-to-CT challenge)" in report
        and "| CT-CLIP image-image (CLIPScore_I2I) |" in report
    )


def test_tokenizer_is_read_beside_the_config(tmp_path):
    from scripts.evaluation.ctclip import load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="no vocab.txt beside config.json"):
        load_tokenizer(tmp_path / "config.json")
    _tokenizer(tmp_path)
    assert load_tokenizer(tmp_path / "config.json")("Large EFFUSION")["input_ids"] == [2, 5, 8, 3]


def test_same_numbers_as_the_official_code():
    """tests/data/ctclip: the official CT-CLIP run at a tiny size (random weights). Its state dict loads strictly
    (the same keys and shapes) and every output agrees exactly."""
    from pathlib import Path

    reference = torch.load(Path(__file__).parent / "data" / "ctclip" / "ctclip_tiny_reference.pt", weights_only=True)
    config = reference["config"]
    model = build_ctclip(BertConfig(**config["bert"]), config["ctvit"], config["ctclip"]["dim_latent"])
    model.load_state_dict(reference["state_dict"], strict=True)
    model.eval()
    volume, ids, mask = reference["volume"], reference["input_ids"], reference["attention_mask"]
    visual = model.visual_transformer
    with torch.no_grad():
        torch.testing.assert_close(visual.encode(visual.to_patch_emb(volume)), reference["pre_vq"], rtol=0, atol=1e-6)
        torch.testing.assert_close(visual(volume), reference["tokens"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_text(ids, mask), reference["text_latents"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_image(volume), reference["image_latents"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(ids, mask, volume), reference["logits"], rtol=0, atol=1e-6)
