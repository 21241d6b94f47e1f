"""Command line: ``python -m scripts.evaluation {run,measure,agreement,text_use,submission} ...`` (``--help`` on each).

``run`` is what ``python -m monai.bundle run evaluate --config_file configs/evaluate.json`` calls.
"""

from __future__ import annotations

import argparse
import json
import sys

from scripts.cli import ArgumentParser, run_main
from scripts.data.io import refuse_existing, write_json
from scripts.evaluation.anatomy_measures import BACKENDS, MEASURES, get_backend, measure_ct
from scripts.evaluation.run import DEFAULT_PARTS, PARTS, run_evaluation


def _run(args: argparse.Namespace) -> None:
    out = run_evaluation(
        args.output_dir,
        args.parts,
        args.synthetic_dir,
        args.synthetic_glob,
        args.real_datalist,
        args.real_split,
        args.training_split,
        args.max_volumes,
        args.medicalnet_resnet50_weights,
        args.resnet50_2d_weights,
        args.large_files,
        args.feature_size,
        args.slice_step,
        args.backend,
        args.adherence_dir,
        args.prompt_pairs,
        args.adherence_num,
        args.segmentation_dir,
        args.agreement_num,
        args.agreement_size,
        random_weights=args.random_weights,
        overwrite=args.overwrite,
        progress=not args.quiet,
        backend_options=_backend_options(args),
        ctclip_weights=args.ct_clip_weights,
        ctclip_text_config=args.cxr_bert_config,
    )
    print(f"wrote {out['paths']['markdown']} and {out['paths']['json']}")


def _backend_options(args: argparse.Namespace) -> dict:
    if args.totalseg_python and args.backend != "totalsegmentator":
        raise ValueError("--totalseg_python needs --backend totalsegmentator")
    return {"totalseg_python": args.totalseg_python} if args.totalseg_python else {}


def _measure(args: argparse.Namespace) -> None:
    from scripts.data.io import read_nifti
    from scripts.evaluation.data import read_ct

    ct, spacing = read_ct(args.ct)
    masks = {k: read_nifti(getattr(args, k))[0] for k in ("lobe", "airway") if getattr(args, k)}
    backend = get_backend(args.backend, **_backend_options(args))
    print(json.dumps(measure_ct(ct, spacing, masks, args.measures, backend), indent=2))


def _agreement(args: argparse.Namespace) -> None:
    from scripts.evaluation.agreement import agreement_markdown, phantom_agreement

    result = phantom_agreement(args.num, args.size, args.seed, args.findings, args.backend, progress=not args.quiet)
    print(agreement_markdown(result))


def _text_use(args: argparse.Namespace) -> None:
    from scripts.evaluation.adherence import load_pairs
    from scripts.evaluation.text_use import text_use_markdown, text_use_study

    if args.json:  # before minutes of forward passes
        refuse_existing(args.json, args.overwrite, "pass --overwrite to replace it")
    results = text_use_study(
        args.weights,
        load_pairs(args.prompt_pairs),
        args.num,
        args.size,
        args.seed,
        noises=args.noises,
        text_encoder=args.text_encoder,
        device=args.device,
    )
    print(text_use_markdown(results))
    if args.json:
        write_json(args.json, {"weights": args.weights, "results": results}, overwrite=args.overwrite)


def _submission(args: argparse.Namespace) -> None:
    from scripts.evaluation.submission import write_submission

    written = write_submission(
        args.prompts, args.samples, args.out, args.seed, args.spacing, args.template, args.zip, args.overwrite
    )
    print(f"wrote {len(written)} volumes into {args.out}" + (f" and {args.zip}" if args.zip else ""))


TOTALSEG_PYTHON_HELP = (
    "python of a separate TotalSegmentator environment (backend totalsegmentator; default $MEDSYN_TOTALSEG_PYTHON, "
    "else TotalSegmentator in this environment)"
)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m scripts.evaluation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run evaluation parts and write report.md / report.json / figures")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS)
    run.add_argument("--synthetic_dir")
    run.add_argument("--synthetic_glob", default="**/*ct.nii.gz")
    run.add_argument("--real_datalist")
    run.add_argument("--real_split", default="validation")
    run.add_argument("--training_split", default="training")
    run.add_argument("--max_volumes", type=int)
    run.add_argument("--medicalnet_resnet50_weights")
    run.add_argument("--resnet50_2d_weights")
    run.add_argument("--ct_clip_weights", help="CT-CLIP checkpoint (ctclip part; default: large_files.yml ct_clip)")
    run.add_argument("--cxr_bert_config", help="CXR-BERT config.json beside its vocab.txt (ctclip part)")
    run.add_argument("--large_files")
    run.add_argument("--feature_size", type=int)
    run.add_argument("--slice_step", type=int, default=4)
    run.add_argument("--backend", default="classical", choices=sorted(BACKENDS))
    run.add_argument("--totalseg_python", help=TOTALSEG_PYTHON_HELP)
    run.add_argument("--adherence_dir")
    run.add_argument("--prompt_pairs")
    run.add_argument("--adherence_num", type=int, default=32)
    run.add_argument("--segmentation_dir")
    run.add_argument("--agreement_num", type=int, default=20)
    run.add_argument("--agreement_size", type=int, default=64)
    run.add_argument("--random_weights", action="store_true", help="random feature networks: smoke tests only")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=_run)

    measure = sub.add_parser("measure", help="anatomy measures of one CT (JSON to stdout)")
    measure.add_argument("ct")
    measure.add_argument("--lobe", help="lobe label map to use instead of segmenting the lungs")
    measure.add_argument("--airway", help="airway mask to use instead of segmenting it")
    measure.add_argument("--measures", nargs="+", choices=sorted(MEASURES))
    measure.add_argument("--backend", default="classical", choices=sorted(BACKENDS))
    measure.add_argument("--totalseg_python", help=TOTALSEG_PYTHON_HELP)
    measure.set_defaults(func=_measure)

    agree = sub.add_parser("agreement", help="classical measures against phantom truth (Markdown table)")
    agree.add_argument("--num", type=int, default=20)
    agree.add_argument("--size", type=int, default=64)
    agree.add_argument("--seed", type=int, default=0)
    agree.add_argument("--findings")
    agree.add_argument("--backend", default="classical", choices=sorted(BACKENDS))
    agree.add_argument("--quiet", action="store_true")
    agree.set_defaults(func=_agreement)

    use = sub.add_parser("text_use", help="does a stage-1 network use the report? loss with finding vs negation")
    use.add_argument("--weights", default="models/lowres_small.pt", help="stage-1 weights (.pt beside its .json)")
    use.add_argument("--prompt_pairs", default="configs/adherence_pairs_phantom.json")
    use.add_argument("--num", type=int, default=6, help="phantom cases per pair")
    use.add_argument("--size", type=int, default=128, help="phantom edge length (resampled to the weights' grid)")
    use.add_argument("--seed", type=int, default=77)
    use.add_argument("--noises", type=int, default=2, help="noise draws per diffusion time")
    use.add_argument("--text_encoder", help="default: the one the weights were trained with")
    use.add_argument("--device", default="cpu")
    use.add_argument("--json", help="also write the results here")
    use.add_argument("--overwrite", action="store_true")
    use.set_defaults(func=_text_use)

    submit = sub.add_parser("submission", help="generated volumes in the VLM3D challenge's layout (one per prompt)")
    submit.add_argument("--prompts", required=True, help="the challenge's prompts.json")
    submit.add_argument("--samples", required=True, help="the inference output folder of those prompts")
    submit.add_argument("--out", required=True, help="the submission folder")
    submit.add_argument("--seed", type=int, default=0, help="which sample of each prompt (inference --seed)")
    submit.add_argument("--spacing", type=float, nargs=3, help="target voxel size in mm (default 1 1 1)")
    submit.add_argument("--template", help="take the spacing of this volume (the challenge's template)")
    submit.add_argument("--zip", help="also write OUT/<name> holding the volumes, e.g. predictions.zip")
    submit.add_argument("--overwrite", action="store_true")
    submit.set_defaults(func=_submission)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    run_main("evaluation", main)
