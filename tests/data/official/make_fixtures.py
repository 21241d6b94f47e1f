"""Make the official-code fixtures of tests/test_official.py by running the official MedSyn code itself.

    python tests/data/official/make_fixtures.py --medsyn PATH [--out tests/data/official]

PATH is a clone of https://github.com/batmanlab/MedSyn (a bare or work-tree git folder; the script reads the files
at fixed revisions with ``git show``). Run it in an environment of its own (docs/official_weights.md, "Remaking
the official fixtures"): torch 2.13 (CPU), accelerate 0.20.3 (the official checkpoint format), einops, einops-exts,
SimpleITK, scikit-image 0.26, monai 1.6, transformers 5.23, nibabel. It never imports this bundle.

What it runs, from the official code (revision: file):

- ed98d6c ``src/extract_text_feature.py``: the official text features of two reports with a tiny CXR-BERT-like
  language model (random weights, hidden 32) in the official format (a bare ``pytorch_model.bin`` with 2048
  positions, loaded ``strict=False`` over the base model).
- 303a29d ``training/video_diffusion_pytorch_*_seg.py`` (the first training scripts): the ``GaussianDiffusion``
  wrapper with its schedule buffers, saved by accelerate after ``prepare(model, ema_model)`` exactly as the official
  ``Trainer.save``: the tiny checkpoints ``lowres/1_ckpt`` and ``sr/1_ckpt`` (live and EMA weights differ).
- ed98d6c ``src/eval_low_res_given_prompt.py``: its ``Trainer`` loads the newest checkpoint (``load(-1)``) and samples
  from the text features with guidance 1 (its own ``train()``), and with guidance 3 (``ema_model.sample``).
- ed98d6c ``src/eval_super_res.py``: its ``Trainer`` super-resolves the guidance-1 low-res sample and writes NIfTI.
- ed98d6c ``src/train_*.py`` and ``src/eval_*.py``: one forward pass of each stage's network class in both decoder
  orders (training: upsample after the first block; inference: after the last).
- ed98d6c ``preprocess/3_transform_image.py`` and c19a8ab ``preprocess/5_transform_lung_mask.py``: the official
  resize of a CT and a lobe map on the atlas grid (atlas_ct.py) to 256³, the registration step being the identity.
- the official network classes at the paper sizes, on the meta device: the key lists ``*_state_dict.tsv``.

What is substituted, and why (each substitution is checked to apply):

- ``xformers.ops.memory_efficient_attention`` → plain softmax attention (xformers needs a GPU build);
- ``torch.device('cuda')`` / ``.cuda()`` → the CPU; the ``Trainer``'s ``amp`` is off (fp16 autocast needs a GPU
  and wraps only ``GaussianDiffusion.forward``, the training loss, never the sampling calls);
- the tiny language model's width: ``hidden_size = 768`` → 32, and its base ``microsoft/BiomedVLP-CXR-BERT-
  specialized`` → the tiny base folder (no network here);
- the ``antsApplyTransforms`` call of the preprocessing → a copy (the CT is on the atlas grid already);
- the super-resolution ``Trainer``'s "dummy text" file on the authors' cluster → a local file (never used:
  ``text = None``);
- imports the runs never call: ``torchvision`` (GIF writing), ``rotary_embedding_torch``, ``diffusers`` → stubs;
  MONAI 1.6 lacks ``AddChanneld`` (SR training transform, not run) → a stub, and loads with ``image_only=True`` →
  ``image_only=False``, the MONAI 0.8 behaviour the official scripts read ``*_meta_dict`` from;
- the starting noise of each sampling loop is given: the first and second draws of ``torch.Generator`` seeded with
  ``SEED`` (what ``MedSynPipeline`` draws for that seed), handed to the official ``torch.randn`` call.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

HEAD = "ed98d6c"  # the newest public revision
TRAINING_V1 = "303a29d"  # the first upload of the training scripts (GaussianDiffusion registers schedule buffers)
PREPROCESS_V1 = "c19a8ab"  # the first upload of the preprocessing (it has 5_transform_lung_mask.py)
SEED = 7
LOWRES = 8  # stage-1 grid edge of the tiny fixtures; stage 2 works on 4x that
SR = 4 * LOWRES
TEXT_WIDTH = 32
LOWRES_CONFIG = dict(
    dim=8,
    cond_dim=TEXT_WIDTH,
    dim_mults=(1, 2),
    channels=4,
    attn_heads=2,
    attn_dim_head=32,
    use_bert_text_cond=False,
    init_dim=None,
    init_kernel_size=7,
    use_sparse_linear_attn=True,
    block_type="resnet",
    resnet_groups=8,
)
SR_CONFIG = {**LOWRES_CONFIG, "use_sparse_linear_attn": False}
PAPER = {
    "lowres": {**LOWRES_CONFIG, "dim": 160, "cond_dim": 768, "dim_mults": (1, 2, 4, 8), "attn_heads": 8},
    "sr": {**SR_CONFIG, "dim": 56, "cond_dim": 768, "dim_mults": (1, 2, 4, 8), "attn_heads": 4},
}
REPORTS = {
    "short": "There are large pleural effusions seen. No evidence of cardiomegaly. No evidence of consolidation.",
    # longer than 192 tokens: the tokens past 192 still shape the first 192 states (the official context is 2048)
    "long": " ".join(
        [
            "Lungs: There is pulmonary fibrosis present with honeycombing in both lower lung zones.",
            "There is no focal consolidation or pulmonary mass lesion demonstrated.",
            "Pleural spaces: There are small bilateral pleural effusions.",
            "Heart and vascular structures: There is cardiomegaly. There is no pericardial effusion.",
        ]
        * 6
    ),
}
PROMPT = "short"  # the report the sampling fixtures are conditioned on


# --- the official code ---------------------------------------------------------------------------------------------


class Official:
    """Reads official files at a revision and runs them as modules, with the documented substitutions."""

    def __init__(self, repo: Path, workdir: Path) -> None:
        self.repo = repo
        self.src = workdir / "official_src"
        self.src.mkdir(parents=True)
        for name in ("utils.py", "dataloader.py", "text.py"):
            (self.src / name).write_text(self.read(HEAD, f"src/{name}"))
        package = self.src / "text_feature"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in ("modeling_cxrbert.py", "configuration_cxrbert.py"):
            (package / name).write_text(self.read(HEAD, f"src/text_feature/{name}"))
        sys.path.insert(0, str(self.src))
        install_stubs()

    def read(self, rev: str, path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
        ).stdout

    def module(
        self,
        rev: str,
        path: str,
        name: str,
        substitutions: tuple[tuple[str, str], ...] = (),
        stop_at: str | None = None,
    ) -> types.ModuleType:
        """Execute the official ``path`` as a module named ``name``; ``stop_at`` (a regex of a line) cuts off the
        scripts' top-level training code, which starts at that line."""
        source = self.read(rev, path)
        if stop_at is not None:
            match = re.search(stop_at, source, flags=re.M)
            assert match, f"{path}: no line matching {stop_at!r}"
            source = source[: match.start()]
        for old, new in substitutions:
            assert old in source, f"{path}: substitution target {old!r} not found"
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = f"{self.repo}@{rev}:{path}"
        sys.modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        return module


def memory_efficient_attention(query, key, value, attn_bias=None):
    """xformers' (B, M, K) attention with its default scale 1/sqrt(K), as plain softmax attention."""
    assert attn_bias is None
    weights = torch.softmax(query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1)
    return weights @ value


def install_stubs() -> None:
    """Stand-ins for modules the official files import but the fixtures never use (see the module docstring)."""
    import transformers  # noqa: F401  (imported first: it probes for torchvision, which must not be the stub)
    import transformers.models.bert  # noqa: F401

    xformers = types.ModuleType("xformers")
    xformers.ops = types.ModuleType("xformers.ops")
    xformers.ops.memory_efficient_attention = memory_efficient_attention
    sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, xformers.ops

    class Unused:
        def __init__(self, *args, **kwargs):
            pass

    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.SimpleNamespace(
        **{n: Unused for n in ("Compose", "Resize", "RandomHorizontalFlip", "CenterCrop", "ToTensor", "ToPILImage")},
        Lambda=Unused,
    )
    torchvision.utils = types.ModuleType("torchvision.utils")
    sys.modules["torchvision"] = torchvision
    rotary = types.ModuleType("rotary_embedding_torch")
    rotary.RotaryEmbedding = Unused
    sys.modules["rotary_embedding_torch"] = rotary
    diffusers = types.ModuleType("diffusers")
    diffusers.DDIMScheduler = diffusers.DDPMScheduler = Unused
    sys.modules["diffusers"] = diffusers

    import monai.transforms
    from monai.transforms import Lambdad, LoadImaged

    monai.transforms.AddChanneld = lambda keys, **kwargs: Lambdad(keys, lambda x: x[None])
    monai.transforms.LoadImaged = functools.partial(LoadImaged, image_only=False)


CUDA = (("torch.device('cuda')", "torch.device('cpu')"),)


class GivenNoise:
    """Hand fixed tensors to the official ``torch.randn(shape, device=...)`` calls that start the sampling loops."""

    def __init__(self, *noises: torch.Tensor) -> None:
        self.pending = {tuple(n.shape): n for n in noises}
        self.original = torch.randn

    def __enter__(self):
        def randn(*args, **kwargs):
            shape = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            if tuple(shape) in self.pending:
                return self.pending.pop(tuple(shape)).clone().to(kwargs.get("device") or "cpu")
            return self.original(*args, **kwargs)

        torch.randn = randn
        return self

    def __exit__(self, *exc):
        torch.randn = self.original
        assert not self.pending, f"noise never drawn for shapes {list(self.pending)}"


def starting_noise() -> tuple[torch.Tensor, torch.Tensor]:
    """What ``MedSynPipeline`` draws for seed ``SEED``: the stage-1 noise, then the stage-2 noise."""
    generator = torch.Generator().manual_seed(SEED)
    lowres = torch.randn((1, 4, LOWRES, LOWRES, LOWRES), generator=generator)
    return lowres, torch.randn((1, 4, SR, SR, SR), generator=generator)


# --- text -----------------------------------------------------------------------------------------------------------


def tiny_language_model(official: Official, out: Path, work: Path) -> dict:
    """A tiny base CXR-BERT folder (config + tokenizer; shipped without weights), the fine-tuned language model in
    the official format (``lm/pytorch_model.bin``), and the official features of ``REPORTS``."""
    from text_feature.configuration_cxrbert import CXRBertConfig
    from text_feature.modeling_cxrbert import CXRBertModel

    words = sorted({w for text in REPORTS.values() for w in re.findall(r"[a-z]+|[^\sa-z]", text.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "##s", "##ed", "##ing"]
    base = work / "base"
    torch.manual_seed(SEED)
    config = CXRBertConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        projection_size=16,
        architectures=["CXRBertModel"],
    )
    CXRBertModel(config).save_pretrained(base)
    (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (base / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))

    feature = official.module(
        HEAD,
        "src/extract_text_feature.py",
        "official_extract_text_feature",
        (
            ("base_model_name = 'microsoft/BiomedVLP-CXR-BERT-specialized'", f"base_model_name = {str(base)!r}"),
            ("hidden_size = 768", f"hidden_size = {TEXT_WIDTH}"),
            ("model.cuda()", "model.cpu()"),
            ("example[item].cuda()", "example[item]"),
        ),
    )
    # "fine-tuning": the official position extension, then every weight moved, saved as the bare state dict
    lm = out / "text" / "lm"
    lm.mkdir(parents=True, exist_ok=True)
    model = CXRBertModel.from_pretrained(str(base))
    old = model.bert.embeddings.position_embeddings.weight.data
    model.bert.embeddings.position_embeddings = torch.nn.Embedding(2048, TEXT_WIDTH)
    model.bert.embeddings.position_embeddings.weight.data[: old.shape[0]] = old
    model.bert.embeddings.register_buffer("position_ids", torch.arange(2048).expand((1, -1)))
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # parameters, not state-dict entries: the tied word embeddings / MLM decoder stay one
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    torch.save(model.state_dict(), lm / "pytorch_model.bin")
    shipped = out / "text" / "base"
    shipped.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(base / name, shipped / name)

    features = {}
    for name, text in REPORTS.items():
        path = work / "text_feature" / f"{name}.npy"
        path.parent.mkdir(exist_ok=True)
        feature.main(argparse.Namespace(prompt=text, text_model_path=str(lm), save_path=str(path)))
        features[name] = torch.from_numpy(np.load(path))
    return features


# --- checkpoints, sampling, forward passes ----------------------------------------------------------------------------


def make_checkpoint(official: Official, stage: str, root: Path) -> None:
    """``root/1_ckpt``: live and EMA weights of a tiny network, saved as the official Trainer saves them."""
    from accelerate import Accelerator

    path = (
        "training/video_diffusion_pytorch_low_res_continuous_time_improve_unet_seg.py"
        if stage == "lowres"
        else "training/video_diffusion_pytorch_SR_continuous_no_temp_attn_and_text_seg.py"
    )
    v1 = official.module(TRAINING_V1, path, f"official_v1_{stage}", stop_at=r"^model = Unet3D\(")
    torch.manual_seed(SEED + (0 if stage == "lowres" else 1))
    net = v1.Unet3D(**(LOWRES_CONFIG if stage == "lowres" else SR_CONFIG))
    size = LOWRES if stage == "lowres" else SR
    kwargs = dict(image_size=size, num_frames=size, channels=4, timesteps=1000, loss_type="l2", volume_depth=size)
    model = v1.GaussianDiffusion(denoise_fn=net, ddim_timesteps=50 if stage == "lowres" else 20, **kwargs)
    ema_model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():  # "training" moved the live weights away from the average
        for p in model.denoise_fn.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    accelerator = Accelerator()
    model, ema_model, optimizer = accelerator.prepare(model, ema_model, optimizer)
    folder = root / "1_ckpt"
    accelerator.save_state(str(folder))
    (folder / "random_states_0.pkl").unlink()  # a pickle: the official loader tolerates its absence
    keys = torch.load(folder / "pytorch_model.bin", weights_only=True).keys()
    assert "betas" in keys and any(k.startswith("denoise_fn.") for k in keys), "no schedule buffers saved"


def eval_trainer(module, stage: str, folder: Path, results: Path, save: Path, size: int):
    net = module.Unet3D(**(LOWRES_CONFIG if stage == "lowres" else SR_CONFIG))
    diffusion = module.GaussianDiffusion(
        denoise_fn=net,
        image_size=size,
        num_frames=size,
        text_use_bert_cls=False,
        channels=4,
        timesteps=1000,
        loss_type="l2",
        use_dynamic_thres=False,
        dynamic_thres_percentile=0.995,
        volume_depth=size,
        ddim_timesteps=50 if stage == "lowres" else 20,
    )
    trainer = module.Trainer(
        diffusion_model=diffusion,
        folder=str(folder),
        ema_decay=0.995,
        num_frames=size,
        train_batch_size=1,
        train_lr=1e-4,
        train_num_steps=1000000,
        gradient_accumulate_every=4 if stage == "lowres" else 2,
        amp=False,
        step_start_ema=10000,
        update_ema_every=10,
        save_and_sample_every=1000,
        results_folder=str(results),
        save_folder=str(save),
        num_sample_rows=1,
        **({"num_sample": 1} if stage == "lowres" else {}),
        max_grad_norm=1.0,
    )
    trainer.load(-1)
    return trainer


def sample_lowres(official: Official, ckpt: Path, features: dict, work: Path) -> dict:
    """The official low-res sampling (eval_low_res_given_prompt.py) with guidance 1 (its Trainer) and 3."""
    # its Trainer names fp32 "fp32", which accelerate rejects ("no"); the official run uses amp=True, fp16 autocast
    # that needs a GPU and wraps only GaussianDiffusion.forward (the training loss), never sample()
    no_amp = (('mixed_precision = "fp32"', 'mixed_precision = "no"'),)
    module = official.module(HEAD, "src/eval_low_res_given_prompt.py", "official_eval_low_res", CUDA + no_amp)
    text_folder, save = work / "lowres_text", work / "lowres_out"
    text_folder.mkdir()
    save.mkdir()
    np.save(text_folder / f"{PROMPT}.npy", features[PROMPT].numpy())
    trainer = eval_trainer(module, "lowres", text_folder, ckpt, save, LOWRES)
    noise = starting_noise()[0]
    with GivenNoise(noise):
        trainer.train()  # samples every text feature with the EMA model, np.save of the [0, 1] output
    guided = {1.0: torch.from_numpy(np.load(save / f"{PROMPT}_sample_0.npy"))}
    with GivenNoise(noise), torch.no_grad():
        guided[3.0] = trainer.ema_model.sample(cond=features[PROMPT], cond_scale=3.0).cpu()
    return guided


def sample_sr(official: Official, ckpt: Path, lowres_sample: torch.Tensor, work: Path, out: Path) -> torch.Tensor:
    """The official super-resolution (eval_super_res.py) of a low-res sample, written as the official NIfTI."""
    folder, save = work / "sr_in", work / "sr_out"
    folder.mkdir()
    save.mkdir()
    # its Trainer loads a "dummy text" file from the authors' cluster, then never uses it (text = None)
    dummy = work / "dummy_text.npy"
    np.save(dummy, np.zeros((1, 192, TEXT_WIDTH), np.float32))
    cluster = '"/ocean/projects/asc170022p/lisun/r3/results/text_embedding_192/", "40005726_Reg.npy"'
    local = ((cluster, f"{str(dummy.parent)!r}, {dummy.name!r}"),)
    module = official.module(HEAD, "src/eval_super_res.py", "official_eval_super_res", CUDA + local)
    module.args = argparse.Namespace(save_mask=True)  # the script's command-line flag
    np.save(folder / f"{PROMPT}_sample_0.npy", lowres_sample.numpy())
    trainer = eval_trainer(module, "sr", folder, ckpt, save, SR)
    captured = []
    original = module.GaussianDiffusion.sample

    def sample(self, *args, **kwargs):
        captured.append(original(self, *args, **kwargs))
        return captured[-1]

    module.GaussianDiffusion.sample = sample
    with GivenNoise(starting_noise()[1]):
        trainer.train()
    shutil.copy(save / f"{PROMPT}_sample_0.nii.gz", out / "official_sr_ct.nii.gz")
    return captured[0].cpu()


def forward_passes(official: Official, lowres_state: dict, sr_state: dict, features: dict) -> dict:
    """One forward of each stage's official network class, training and inference decoder order."""
    classes = {
        ("lowres", "training"): official.module(HEAD, "src/train_low_res.py", "official_train_low_res"),
        ("lowres", "inference"): sys.modules["official_eval_low_res"],
        ("sr", "training"): official.module(
            HEAD, "src/train_super_res.py", "official_train_super_res", stop_at=r"^model = Unet3D\("
        ),
        ("sr", "inference"): sys.modules["official_eval_super_res"],
    }
    generator = torch.Generator().manual_seed(SEED + 3)
    inputs = {
        "lowres": dict(
            x=torch.randn(1, 4, LOWRES, LOWRES, LOWRES, generator=generator),
            time=torch.tensor([437.5]),
            cond=features[PROMPT],
        ),
        # the super-resolution network takes no text; its training class still asserts that some cond is passed
        "sr": dict(
            x=torch.randn(1, 8, 16, 16, 16, generator=generator),
            time=torch.tensor([612.0]),
            cond=torch.zeros(1, 192, TEXT_WIDTH),
        ),
    }
    results = {}
    for (stage, order), module in classes.items():
        net = module.Unet3D(**(LOWRES_CONFIG if stage == "lowres" else SR_CONFIG))
        state = lowres_state if stage == "lowres" else sr_state
        missing, unexpected = net.load_state_dict(
            {k.removeprefix("denoise_fn."): v for k, v in state.items() if k.startswith("denoise_fn.")}, strict=True
        )
        net.eval()
        args = inputs[stage]
        with torch.no_grad():
            out = net(args["x"], args["time"], cond=args["cond"], null_cond_prob=0.0)
            null = net(args["x"], args["time"], cond=args["cond"], null_cond_prob=1.0) if stage == "lowres" else None
        results[f"{stage}_{order}"] = {"output": out, "output_null_cond": null}
    return {"inputs": inputs, "outputs": results}


# --- preprocessing ----------------------------------------------------------------------------------------------------


class CopyInsteadOfAnts:
    """The ``os`` of a preprocessing script with ``os.system("antsApplyTransforms -i IN ... -o OUT ...")`` copying IN
    to OUT: registration to the atlas is the identity for a volume already on the atlas grid."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def system(self, command: str) -> int:
        assert command.startswith("antsApplyTransforms"), command
        parts = command.split()
        shutil.copy(parts[parts.index("-i") + 1], parts[parts.index("-o") + 1])
        self.calls += 1
        return 0


def preprocessing(official: Official, work: Path) -> dict:
    """Official step 3 (CT) and the first upload's step 5 (lobe map) on atlas_ct.py's volumes."""
    spec = importlib.util.spec_from_file_location("atlas_ct", Path(__file__).with_name("atlas_ct.py"))
    atlas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atlas)
    ct, lobe = atlas.atlas_ct()
    here = Path.cwd()
    results = {}
    try:
        os.chdir(work)
        for folder in ("nii_raw", "lung_mask_raw", "transform_mask", "moved_img_256", "moved_lung_mask_256"):
            Path(folder).mkdir()
        for array, folder in ((ct, "nii_raw"), (lobe, "lung_mask_raw")):
            nib.save(nib.Nifti1Image(array, atlas.AFFINE), f"{folder}/case.nii.gz")
        Path("transform_mask/case_Reg_Atlas_Affine_0GenericAffine.mat").write_text("identity\n")
        for rev, path, folder, key in (
            (HEAD, "preprocess/3_transform_image.py", "moved_img_256", "ct"),
            (PREPROCESS_V1, "preprocess/5_transform_lung_mask.py", "moved_lung_mask_256", "lobe"),
        ):
            module = official.module(rev, path, f"official_{key}_preprocess")
            module.os = shim = CopyInsteadOfAnts()
            module.sub_job(0)
            assert shim.calls == 1
            results[key] = np.load(f"{folder}/case_Reg.npy")
    finally:
        os.chdir(here)
    return results


def summary(volume: np.ndarray) -> dict:
    """What the test compares of a 256³ official volume: every 7th voxel from 3 on, and the mean along each axis."""
    volume = np.asarray(volume, dtype=np.float64)
    return {
        "strided": torch.from_numpy(volume[3::7, 3::7, 3::7].astype(np.float32)),
        "profiles": [torch.from_numpy(volume.mean(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)],
    }


def plain(obj):
    """Tensors as plain float32/int tensors (MONAI's MetaTensor does not load with ``weights_only=True``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().as_subclass(torch.Tensor).clone()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def key_lists(official: Official, out: Path) -> None:
    """Every state-dict entry of the official networks at the paper sizes: ``key<TAB>shape<TAB>numel``."""
    for stage, module in (("lowres", "official_train_low_res"), ("sr", "official_train_super_res")):
        with torch.device("meta"):
            net = sys.modules[module].Unet3D(**PAPER[stage])
        rows = [f"denoise_fn.{k}\t{tuple(v.shape)}\t{v.numel()}" for k, v in net.state_dict().items()]
        (out / f"{stage}_state_dict.tsv").write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--medsyn", required=True, type=Path, help="clone of github.com/batmanlab/MedSyn")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    out = args.out.resolve()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        official = Official(args.medsyn.resolve(), work)
        features = tiny_language_model(official, out, work)
        for stage in ("lowres", "sr"):
            target = out / "checkpoints" / stage
            shutil.rmtree(target, ignore_errors=True)
            make_checkpoint(official, stage, target)
        guided = sample_lowres(official, out / "checkpoints" / "lowres", features, work)
        sr = sample_sr(official, out / "checkpoints" / "sr", guided[1.0], work, out)
        states = {
            stage: torch.load(out / "checkpoints" / stage / "1_ckpt" / name, weights_only=True)
            for stage, name in (("lowres", "pytorch_model_1.bin"), ("sr", "pytorch_model.bin"))
        }
        forward = forward_passes(official, states["lowres"], states["sr"], features)
        key_lists(official, out)
        preprocess = preprocessing(official, work)
    lowres_noise, sr_noise = starting_noise()
    fixture = {
        "seed": SEED,
        "reports": REPORTS,
        "prompt": PROMPT,
        "text_features": features,
        "noise": {"lowres": lowres_noise, "sr": sr_noise},
        "lowres_samples": {str(k): v for k, v in guided.items()},  # official [0, 1] outputs
        "sr_sample": sr,
        "forward": forward,
        "preprocess": {key: summary(volume) for key, volume in preprocess.items()},
        "lowres_config": LOWRES_CONFIG,
        "sr_config": SR_CONFIG,
    }
    torch.save(plain(fixture), out / "expected.pt")
    print(f"wrote the official fixtures to {out}")


if __name__ == "__main__":
    main()
