#!/usr/bin/env bash
# MedSAM2 segmenter on a lent GPU machine: seconds per study and per slice, CUDA bf16 vs CPU,
# on the synthetic 512x512x300 study (random seeded checkpoint, MedSAM2's exact format).
#
# Run in the repository root on a bare machine with torch + CUDA preinstalled, after
#   pip install -e . --no-deps && pip install sam2==1.1.0 hydra-core omegaconf scipy \
#       scikit-image pydicom highdicom platformdirs monai
# Budget: about 4-5 minutes (most of it is writing the two 512x512x300 studies and the CPU
# rows); hard limits 300 s (CUDA) + 150 s (CPU).
#   bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export TQDM_DISABLE=1 PYTHONWARNINGS=ignore
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("card:", torch.cuda.get_device_name(0))
PY
START=$(date +%s)
# 1) CUDA (bf16 autocast): ours and the reference on the full 300 slices (no extrapolation).
timeout 300 "$PY" scripts/bench_medsam2.py --device cuda --slices 0 --cases synth1,synth3 \
    --paths ours,reference --workdir "$OUT/work" --json "$OUT/cuda.json" | tee "$OUT/cuda.txt" || echo "CUDA rows: failed or timed out"
# 2) CPU of the same machine: ours only, one and three lesions (same studies, same checkpoint).
timeout 150 "$PY" scripts/bench_medsam2.py --device cpu --cases synth1,synth3 --paths ours \
    --workdir "$OUT/work" --json "$OUT/cpu.json" | tee "$OUT/cpu.txt" || echo "CPU rows: timed out"
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for dev in ("cuda", "cpu"):
    p = out / f"{dev}.json"
    if p.exists():
        rows += [dict(r, device=dev) for r in json.loads(p.read_text())]
print("\nsummary (seconds per study = run_s of the segmentation; per slice = per tracking step)")
for r in rows:
    print(f"{r['device']:<4} {r['case']:<7} {r['path']:<9} {r['run_s']:8.2f} s/study  "
          f"{r['run_s'] / max(r['steps'], 1):7.4f} s/slice  enc {r['encoder_calls']:4d}  "
          f"RSS {r['peak_rss_mb']:6.0f} MB  GPU {r.get('cuda_peak_mb', 0):6.0f} MB")
PY
# 3) monai_retinanet detector (MONAI lung_nodule_ct_detection), RANDOM weights, FOR COST ONLY:
#    512x512x300 synthetic study, CUDA with the bundle's amp (float16 autocast); about 1 min.
echo "monai_retinanet, RANDOM weights (cost only, no accuracy):"
timeout 240 "$PY" scripts/bench_retinanet.py --device cuda --json "$OUT/retinanet_cuda.json" \
    | tee "$OUT/retinanet_cuda.txt" || echo "monai_retinanet CUDA row: failed or timed out"
# 4) nnunet_fullscan detector (a 1.5 mm full-resolution nnU-Net on the lung crop, the shape of
#    TotalSegmentator lung_nodules), RANDOM weights, FOR COST ONLY: 512x512x300 synthetic chest.
echo "nnunet_fullscan, RANDOM weights (cost only, no accuracy):"
timeout 240 "$PY" scripts/bench_nnunet_fullscan.py --device cuda --full \
    --json "$OUT/fullscan_cuda.json" | tee "$OUT/fullscan_cuda.txt" \
    || echo "nnunet_fullscan CUDA row: failed or timed out"
echo "total $(( $(date +%s) - START )) s"
