"""CT-CLIP (Hamamci et al., 2024): the image-text model behind the CT-CLIP score of text-to-CT evaluation.

The VLM3D challenge scores generated chest CTs with CT-CLIP: the cosine similarity of a generated volume's latent
with its prompt's (image-text) and with the real volume's (image-image), each as ``max(100 * cosine, 0)``
(:func:`clip_score`). This module rebuilds the networks of the official release so that its checkpoint
(``CT-CLIP_v2.pt``, CC BY-NC-SA 4.0, fetched by hand: ``large_files.yml``) loads strictly into them:

- :class:`CTViT`, the image encoder: 3D patches (10 slices x 20 x 20 voxels) → a spatial then a temporal (depth)
  transformer, each layer a depth-wise convolutional position encoding, attention and a GEGLU feed-forward → a
  cosine-similarity vector quantiser; (B, 1, D, 480, 480) → a (B, D/10, 24, 24, 512) token grid.
- :class:`CTCLIP`: CXR-BERT (a plain ``BertModel``, CLS token) and the image encoder, with linear projections to a
  512-d latent. The image latent is the token grid averaged over depth only, flattened in (h, w, channel) order.

Behaviours of the official code kept on purpose, since the checkpoint was trained with them (file and line of
ibrahimethemhamamci/CT-CLIP at a2a155c, ``transformer_maskgit/transformer_maskgit/``):

- attention takes keys and values from the input before its layer norm; only queries are normalised
  (``attention.py`` l.139-143); queries and keys are l2-normalised and scaled by learned per-channel factors, with
  a fixed logit scale of 8;
- the position encoding reshapes its input as (b, t, h, w, d) without permuting, also in the temporal stage whose
  rows are ordered (b, h, w, t) (``attention.py`` PEG, l.56-84), and pads the depth axis causally (2 before, 0 after);
- the quantiser returns the stored codebook vectors themselves (not normalised) for the nearest code by cosine;
- unused layers of the official model (first-frame patch embedding, pixel decoders, a second pair of latent
  projections) are built too, so the checkpoint's keys match one for one.

Input preprocessing (:func:`preprocess`): HU clipped to [-1000, 1000], trilinear resampling to 0.75 x 0.75 x 1.5 mm,
centre crop or pad with -1000 HU to 480 x 480 x 240, divided by 1000, as ``scripts/data_inference_nii.py`` of the
official release (l.96-165).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn
from tqdm import tqdm

from scripts.evaluation.data import read_ct, synthetic_paths, volume_id
from scripts.evaluation.features import MissingWeightsError, resolve_weights
from scripts.networks.weights import read_state_file, state_difference
from scripts.text.reports import read_text_file

# the official CTViT and CTCLIP arguments (CT-CLIP scripts/run_zero_shot.py l.6-34)
OFFICIAL_CTVIT = {
    "dim": 512,
    "codebook_size": 8192,
    "image_size": 480,
    "patch_size": 20,
    "temporal_patch_size": 10,
    "spatial_depth": 4,
    "temporal_depth": 4,
    "dim_head": 32,
    "heads": 8,
}
OFFICIAL_LATENT_DIM = 512
INPUT_SPACING = (0.75, 0.75, 1.5)  # mm, (x, y, z)
INPUT_SHAPE = (480, 480, 240)  # voxels, (x, y, z)
HU_WINDOW = (-1000.0, 1000.0)


class _LayerNorm(nn.Module):
    """The official code's layer norm: a learned scale ``gamma`` and a bias ``beta`` kept as a (persistent) buffer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def _feed_forward(dim: int, mult: float = 4.0) -> nn.Sequential:
    inner = int(mult * (2 / 3) * dim)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner * 2, bias=False),
        _GEGLU(),
        nn.Dropout(0.0),
        nn.Linear(inner, dim, bias=False),
    )


class _PositionEncoding(nn.Module):
    """Depth-wise 3D convolution over the token grid, causal along depth (the official ``PEG``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        original = x.shape
        x = x.reshape(*shape, -1)  # as the official code: no permute, whatever order the rows are in
        x = rearrange(x, "b t h w d -> b d t h w")
        x = self.dsconv(F.pad(x, (1, 1, 1, 1, 2, 0)))
        return rearrange(x, "b d t h w -> b t h w d").reshape(original)


class _Attention(nn.Module):
    """Self-attention with l2-normalised, learned-scale queries and keys (keys and values from the input as given)."""

    def __init__(self, dim: int, dim_head: int, heads: int, scale: float = 8.0) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        inner = dim_head * heads
        self.norm = _LayerNorm(dim)
        self.context_norm = _LayerNorm(dim)  # used by the official cross-attention only; kept for the keys
        self.null_kv = nn.Parameter(torch.randn(heads, 0, dim_head))  # no null key-values (num_null_kv = 0)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        if attn_bias is not None:
            sim = sim + attn_bias
        out = torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class _Transformer(nn.Module):
    """Layers of [position encoding, attention, (no cross-attention), feed-forward], then a layer norm."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([_PositionEncoding(dim), _Attention(dim, dim_head, heads), None, _feed_forward(dim)])
            for _ in range(depth)
        )
        self.norm_out = _LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for position, attention, _, feed_forward in self.layers:
            x = position(x, shape) + x
            x = attention(x, attn_bias) + x
            x = feed_forward(x) + x
        return self.norm_out(x)


class _ContinuousPositionBias(nn.Module):
    """Attention bias of the spatial stage from the log-scaled (row, column) offset between two tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)),
                nn.Linear(dim, heads),
            ]
        )

    def forward(self, h: int, w: int) -> torch.Tensor:
        device = self.net[2].weight.device
        grid = torch.stack(
            torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        )
        grid = rearrange(grid, "c i j -> (i j) c").float()
        offset = grid[:, None] - grid[None]
        x = torch.sign(offset) * torch.log(offset.abs() + 1)
        for layer in self.net:
            x = layer(x)
        return rearrange(x, "i j h -> h i j")


class _Codebook(nn.Module):
    """The cosine-similarity codebook of the official vector quantiser (vector-quantize-pytorch 1.1.2)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", torch.randn(1, codebook_size, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) → the stored code vectors nearest by cosine similarity."""
        similarity = F.normalize(x, dim=-1) @ F.normalize(self.embed[0], dim=-1).t()
        return self.embed[0][similarity.argmax(dim=-1)]


class _VectorQuantize(nn.Module):
    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = _Codebook(dim, codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._codebook(x)


class CTViT(nn.Module):
    """CT-CLIP's image encoder: (B, C, D, H, W) volume → (B, D / temporal_patch, H / patch, W / patch, dim) tokens.

    Args:
        dim: token width (official 512).
        codebook_size: code vectors of the quantiser (8192).
        image_size: H = W of the input (480).
        patch_size: in-plane patch edge (20).
        temporal_patch_size: slices per patch along D (10).
        spatial_depth, temporal_depth: layers of the two transformers (4, 4).
        dim_head, heads: attention head width and count (32, 8).
        channels: input channels (1).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        image_size: int,
        patch_size: int,
        temporal_patch_size: int,
        spatial_depth: int,
        temporal_depth: int,
        dim_head: int = 64,
        heads: int = 8,
        channels: int = 1,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.temporal_patch_size = image_size, patch_size, temporal_patch_size
        # the (X, Y, Z) grid CTs are put on: the official 480 x 480 x 240, half as many slices as rows
        self.input_shape = (image_size, image_size, image_size // 2)
        self.spatial_rel_pos_bias = _ContinuousPositionBias(dim, heads)
        first_frame = channels * patch_size * patch_size
        patch = first_frame * temporal_patch_size
        # the first-frame embedding and the pixel decoders are never used by the encoder; kept for the checkpoint
        self.to_patch_emb_first_frame = nn.Sequential(
            Rearrange("b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=patch_size, p2=patch_size),
            nn.LayerNorm(first_frame),
            nn.Linear(first_frame, dim),
            nn.LayerNorm(dim),
        )
        self.to_patch_emb = nn.Sequential(
            Rearrange(
                "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", p1=patch_size, p2=patch_size, pt=temporal_patch_size
            ),
            nn.LayerNorm(patch),
            nn.Linear(patch, dim),
            nn.LayerNorm(dim),
        )
        self.enc_spatial_transformer = _Transformer(dim, spatial_depth, dim_head, heads)
        self.enc_temporal_transformer = _Transformer(dim, temporal_depth, dim_head, heads)
        self.vq = _VectorQuantize(dim, codebook_size)
        self.to_pixels_first_frame = nn.Sequential(
            nn.Linear(dim, first_frame),
            Rearrange("b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=patch_size, p2=patch_size),
        )
        self.to_pixels = nn.Sequential(
            nn.Linear(dim, patch),
            Rearrange(
                "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", p1=patch_size, p2=patch_size, pt=temporal_patch_size
            ),
        )

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, dim) patch embeddings → the same grid after the spatial and the temporal transformer."""
        b, t, h, w, _ = tokens.shape
        shape = (b, t, h, w)
        x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        x = self.enc_spatial_transformer(x, shape, attn_bias=self.spatial_rel_pos_bias(h, w))
        x = rearrange(x, "(b t) (h w) d -> (b h w) t d", b=b, h=h, w=w)
        x = self.enc_temporal_transformer(x, shape)
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, C, D, image_size, image_size), D a multiple of ``temporal_patch_size`` → (B, t, h, w, dim) tokens."""
        if volume.ndim != 5 or tuple(volume.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"expected a (B, C, D, {self.image_size}, {self.image_size}) volume, got {tuple(volume.shape)}; "
                "prepare CTs with scripts.evaluation.ctclip.preprocess"
            )
        if volume.shape[2] % self.temporal_patch_size:
            raise ValueError(f"depth {volume.shape[2]} is not a multiple of {self.temporal_patch_size} slices")
        tokens = self.encode(self.to_patch_emb(volume))
        b, t, h, w, d = tokens.shape
        return self.vq(tokens.reshape(b, -1, d)).reshape(b, t, h, w, d)


class CTCLIP(nn.Module):
    """CT-CLIP: text and CT volume → l2-normalised latents in one space.

    Args:
        text_transformer: a ``transformers.BertModel`` (CXR-BERT specialised, loaded as a plain BERT).
        visual_transformer: the :class:`CTViT`.
        dim_image: flattened image embedding width, (H / patch) * (W / patch) * dim (official 294912).
        dim_text: text width (768).
        dim_latent: latent width (512).
    """

    def __init__(
        self, text_transformer: nn.Module, visual_transformer: CTViT, dim_image: int, dim_text: int, dim_latent: int
    ) -> None:
        super().__init__()
        self.text_transformer = text_transformer
        self.visual_transformer = visual_transformer
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        # the official model always builds a second pair (extra_latent_projection, off); kept for the checkpoint
        self.to_text_latent_extra = copy.deepcopy(self.to_text_latent)
        self.to_visual_latent_extra = copy.deepcopy(self.to_visual_latent)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and their mask → (B, dim_latent) unit latents (the CLS token, projected)."""
        hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        return F.normalize(self.to_text_latent(hidden[:, 0]), dim=-1)

    def encode_image(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) preprocessed volume → (B, dim_latent) unit latents: tokens averaged over depth only."""
        tokens = self.visual_transformer(volume).mean(dim=1)
        return F.normalize(self.to_visual_latent(tokens.flatten(1)), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        """Per pair, the cosine similarity of text and image latents times exp(temperature) (the official logits)."""
        text, image = self.encode_text(input_ids, attention_mask), self.encode_image(volume)
        return (text * image).sum(dim=-1) * self.temperature.exp()


def build_ctclip(text_config: object, ctvit: dict | None = None, dim_latent: int = OFFICIAL_LATENT_DIM) -> CTCLIP:
    """CT-CLIP with random weights: a ``BertModel`` of ``text_config`` (a ``transformers.BertConfig``) and a
    :class:`CTViT` of the ``ctvit`` arguments (default: the official ones)."""
    from transformers import BertModel

    ctvit = {**OFFICIAL_CTVIT, **(ctvit or {})}
    tokens = ctvit["image_size"] // ctvit["patch_size"]
    visual = CTViT(**ctvit)
    return CTCLIP(BertModel(text_config), visual, tokens * tokens * ctvit["dim"], text_config.hidden_size, dim_latent)


def load_ctclip(
    weights: str | Path | None = None,
    text_config: str | Path | None = None,
    large_files: str | Path | None = None,
    device: str | torch.device = "cpu",
    ctvit: dict | None = None,
    dim_latent: int = OFFICIAL_LATENT_DIM,
) -> CTCLIP:
    """The official CT-CLIP, loaded strictly, in eval mode.

    Args:
        weights: the official checkpoint (``CT-CLIP_v2.pt``, a plain state dict); default: the ``ct_clip`` entry of
            ``large_files.yml`` (``models/ct_clip/CT-CLIP_v2.pt``).
        text_config: CXR-BERT's ``config.json`` (in its folder, beside ``vocab.txt`` for the tokenizer); default:
            the ``cxr_bert_specialized`` entry (``models/cxr-bert/config.json``).
        large_files: the ``large_files.yml`` to look both up in.
        device: where the model goes.
        ctvit, dim_latent: the image encoder's arguments and the latent width, for other sizes than the official
            ones (as :func:`build_ctclip`; tests use tiny ones).

    Raises:
        MissingWeightsError: either file is absent (one line naming where to put it).
        ValueError: the checkpoint does not fit the architecture (keys or shapes named); nothing is loaded.
    """
    from transformers import BertConfig

    path = resolve_weights("ct_clip", weights, large_files)  # both looked up before anything is built
    config_path = resolve_weights("cxr_bert_specialized", text_config, large_files)
    config = BertConfig.from_json_file(str(config_path))
    model = build_ctclip(config, ctvit, dim_latent)
    state = read_state_file(path, "the CT-CLIP checkpoint", "fetch it again (large_files.yml, ct_clip)")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not the CT-CLIP state dict")
    state, own = dict(state), model.state_dict()
    if "text_transformer.embeddings.position_ids" not in own:  # a buffer of older transformers, not a weight
        state.pop("text_transformer.embeddings.position_ids", None)
    difference = state_difference(own, state)
    if difference:
        raise ValueError(f"{path} does not fit CT-CLIP: {difference}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def preprocess(ct_hu: np.ndarray, spacing: Sequence[float], shape: Sequence[int] = INPUT_SHAPE) -> torch.Tensor:
    """A CT in HU, (X, Y, Z) with voxel ``spacing`` (mm) → the (1, 1, Z, X, Y) CT-CLIP input.

    Clip to [-1000, 1000] HU, resample trilinearly to 0.75 x 0.75 x 1.5 mm (sizes ``int(n * spacing / target)``),
    divide by 1000, centre crop or pad with -1 to ``shape`` (official 480 x 480 x 240).
    """
    if np.ndim(ct_hu) != 3 or len(spacing) != 3:
        raise ValueError(f"expected an (X, Y, Z) CT and three spacings, got shape {np.shape(ct_hu)}")
    x = torch.as_tensor(np.asarray(ct_hu, dtype=np.float32)).clamp(*HU_WINDOW)
    size = [max(1, int(n * s / t)) for n, s, t in zip(x.shape, spacing, INPUT_SPACING)]
    x = F.interpolate(x[None, None], size=size, mode="trilinear", align_corners=False)[0, 0] / 1000.0
    out = torch.full(tuple(shape), -1.0)
    source, target = [], []
    for n, m in zip(x.shape, shape):
        start = max(0, (n - m) // 2)  # crop
        offset = max(0, (m - n) // 2)  # pad before
        length = min(n, m)
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[tuple(target)] = x[tuple(source)]
    return out.permute(2, 0, 1)[None, None]


def clip_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The VLM3D CT-CLIP score of paired latents: ``max(100 * cosine(a_i, b_i), 0)`` per pair."""
    return (100.0 * F.cosine_similarity(a, b, dim=-1)).clamp_min(0.0)


def load_tokenizer(text_config: str | Path | None = None, large_files: str | Path | None = None) -> Any:
    """CXR-BERT's tokenizer (``vocab.txt`` beside its ``config.json``), lower-casing as CT-CLIP's scripts do."""
    from transformers import BertTokenizer

    folder = resolve_weights("cxr_bert_specialized", text_config, large_files).parent
    if not (folder / "vocab.txt").is_file():
        raise MissingWeightsError(f"{folder}: no vocab.txt beside config.json; save CXR-BERT's tokenizer there")
    return BertTokenizer.from_pretrained(str(folder), do_lower_case=True)


@torch.inference_mode()
def text_latents(model: CTCLIP, tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """(N, dim_latent) latents of reports, tokenised as CT-CLIP's scripts: padded to ``max_length`` and truncated
    (default 512, the official length, or the text encoder's positions when fewer)."""
    device = model.to_text_latent.weight.device
    max_length = max_length or min(512, model.text_transformer.config.max_position_embeddings)
    tokens = tokenizer(
        list(texts), return_tensors="pt", padding="max_length", truncation=True, max_length=max_length
    ).to(device)
    return model.encode_text(tokens["input_ids"], tokens["attention_mask"])


@torch.inference_mode()
def image_latent(model: CTCLIP, ct_hu: np.ndarray, spacing: Sequence[float]) -> torch.Tensor:
    """(1, dim_latent) latent of one CT (HU, (X, Y, Z), spacing in mm) on the model's input grid."""
    device = model.to_visual_latent.weight.device
    return model.encode_image(preprocess(ct_hu, spacing, model.visual_transformer.input_shape).to(device))


def sidecar_of(ct_path: Path) -> dict:
    """The JSON sidecar the bundle writes beside a generated ``<id>_ct.nii.gz`` (``<id>.json``), or {}."""
    sidecar = ct_path.with_name(ct_path.name.removesuffix(".nii.gz").removesuffix("_ct") + ".json")
    if not sidecar.is_file():
        return {}
    content = json.loads(read_text_file(sidecar))
    return content if isinstance(content, dict) else {}


def score_folder(
    model: CTCLIP,
    tokenizer: Any,
    synthetic_dir: str | Path,
    synthetic_glob: str = "**/*ct.nii.gz",
    real_items: Sequence[Mapping[str, Any]] = (),
    max_volumes: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """CT-CLIP scores of generated volumes, as the VLM3D challenge reports them.

    Image-text: each volume against the report of its sidecar (``prompt``). Image-image: each volume against the
    real volume whose datalist ``id`` equals the sidecar's ``prompt_id`` (a prompt file made from the real cases'
    reports names each prompt after its case). Volumes without a report or a real counterpart are counted, not
    scored.

    Returns:
        ``clip_score_i2t``, ``clip_score_i2i`` (None when no pair), ``clip_score_mean`` (their mean when both exist),
        ``n_i2t``, ``n_i2i``, ``n_volumes`` and per-volume scores under ``volumes``.
    """
    real = {str(item["id"]): item for item in real_items}
    per_volume: dict[str, dict[str, float]] = {}
    root = Path(synthetic_dir)
    for path in tqdm(synthetic_paths(root, synthetic_glob, max_volumes), desc="CT-CLIP", disable=not progress):
        ct, spacing = read_ct(path)
        latent = image_latent(model, ct, spacing)
        sidecar, scores = sidecar_of(path), {}
        if sidecar.get("prompt"):
            scores["i2t"] = float(clip_score(latent, text_latents(model, tokenizer, [sidecar["prompt"]]))[0])
        counterpart = real.get(str(sidecar.get("prompt_id")))
        if counterpart is not None:
            scores["i2i"] = float(clip_score(latent, image_latent(model, *read_ct(counterpart["image"])))[0])
        per_volume[volume_id(path, root)] = scores
    i2t = [s["i2t"] for s in per_volume.values() if "i2t" in s]
    i2i = [s["i2i"] for s in per_volume.values() if "i2i" in s]
    mean_i2t = float(np.mean(i2t)) if i2t else None
    mean_i2i = float(np.mean(i2i)) if i2i else None
    both = mean_i2t is not None and mean_i2i is not None
    return {
        "clip_score_i2t": mean_i2t,
        "clip_score_i2i": mean_i2i,
        "clip_score_mean": (mean_i2t + mean_i2i) / 2 if both else None,
        "n_volumes": len(per_volume),
        "n_i2t": len(i2t),
        "n_i2i": len(i2i),
        "volumes": per_volume,
    }


__all__ = [
    "CTCLIP",
    "CTViT",
    "OFFICIAL_CTVIT",
    "build_ctclip",
    "clip_score",
    "image_latent",
    "load_ctclip",
    "load_tokenizer",
    "preprocess",
    "score_folder",
    "text_latents",
]
