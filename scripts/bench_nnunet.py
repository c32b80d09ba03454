#!/usr/bin/env python
"""Cost of the lightweight nnU-Net detector vs nnU-Net's own 3d_fullres for lung CT (CPU).

Weights are random (cost does not depend on them). Both plans come from nnU-Net's own
planners run on a lung-CT fingerprint (spacing 1.24 x 0.79 x 0.79 mm, 252 x 512 x 512
voxels, like MSD Task06 Lung): ``AutosegDetectorPlanner`` (2.5 mm, 16..128 features, 5
stages) and nnU-Net's default ``ExperimentPlanner`` (its ``3d_fullres``). TTA (mirroring) off.

Inputs
  * ``real``: pycerr ``pat_4`` (a real NSCLC CT, cropped chest, 0.98 x 0.98 x 3 mm), padded
    in-plane with air (-1024 HU) to 512 x 512, centred (slices kept);
  * ``synthetic``: a seeded synthetic chest, 300 x 512 x 512 at 1.25 x 0.78 x 0.78 mm.

Measured
  * detector: the whole run (preprocessing, sliding window, resampling back, boxes): wall
    time, peak RSS (each run in its own child process), patches;
  * 3d_fullres: preprocessing (wall), the patch count, and the time per patch on
    ``--patches`` patches (default 3).
Extrapolated (labelled so)
  * 3d_fullres total = preprocessing + patches x time per patch (resampling back and export
    are not counted, so the figure is a lower bound); TTA on = patches x time per patch x 8.

Usage: ``.venv/bin/python scripts/bench_nnunet.py --threads 2 [--json rows.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FINGERPRINT_SPACING = [1.24, 0.79, 0.79]
FINGERPRINT_SHAPE = [252, 512, 512]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_input(name: str, cache: Path) -> Any:
    from autoprompt_seg.types import Volume

    if name == "real":
        from autoprompt_seg.data import fetch_pycerr
        from autoprompt_seg.io.dicom import load_study

        vol, _ = load_study(fetch_pycerr(cache) / "pat_4")
        nz, ny, nx = vol.shape
        arr = np.full((nz, max(512, ny), max(512, nx)), -1024.0, dtype=np.float32)
        y0, x0 = (arr.shape[1] - ny) // 2, (arr.shape[2] - nx) // 2
        arr[:, y0:y0 + ny, x0:x0 + nx] = vol.array
        return Volume(array=arr, spacing=vol.spacing, origin=vol.origin,
                      direction=vol.direction, source_format="synthetic")
    from autoprompt_seg.synthetic import synthetic_chest

    c = synthetic_chest((300, 512, 512), (1.25, 0.78, 0.78), n_tumours=3, seed=0)
    return Volume(array=c.hu, spacing=c.spacing, origin=(0.0, 0.0, 0.0),
                  direction=np.eye(3), source_format="synthetic")


def child(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from autoprompt_seg.config import Settings

    torch.set_num_threads(job["threads"])
    vol = _load_input(job["input"], Path(job["cache"]))
    settings = Settings(device="cpu", threads=job["threads"],
                        options={"nnunet": {"model_dir": job["model"], "tta": False}})
    row: dict[str, Any] = {"input": job["input"], "shape_zyx": list(vol.shape),
                           "spacing_zyx": [round(s, 3) for s in vol.spacing],
                           "model": job["kind"]}
    if job["kind"] == "detector":
        from autoprompt_seg.detect.nnunet import create

        t0 = time.perf_counter()
        det = create(settings)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        boxes = det.detect(vol)
        wall = time.perf_counter() - t0
        out = det.model.predict(vol)
        row.update(load_s=round(t_load, 1), wall_s=round(wall, 1), measured="all",
                   patches=out.n_patches, boxes=len(boxes), peak_rss_mb=round(_peak_rss_mb()),
                   patch=list(det.model.patch_size()),
                   s_per_patch=round(wall / max(out.n_patches, 1), 2))
        return row
    # 3d_fullres: preprocessing + a few patches, measured; the rest extrapolated
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from autoprompt_seg.models.nnunet.model import load_model, quiet_stdout

    model = load_model(settings)
    p = model.predictor
    t0 = time.perf_counter()
    with quiet_stdout():
        ppa = PreprocessAdapterFromNpy([vol.array[None]], [None],
                                       [{"spacing": list(vol.spacing)}], [None],
                                       p.plans_manager, p.dataset_json,
                                       p.configuration_manager, num_threads_in_multithreaded=1)
        dct = next(ppa)
    t_pre = time.perf_counter() - t0
    data = dct["data"]
    n_patches = model._count_patches(data.shape[1:])
    patch = [int(s) for s in p.configuration_manager.patch_size]
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, _ = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    slicers = p._internal_get_sliding_window_slicers(padded.shape[1:])
    gauss = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10,
                             device=torch.device("cpu"))
    net = p.network.to("cpu").eval()
    times = []
    with torch.inference_mode():
        idx = np.linspace(0, len(slicers) - 1, job["patches"]).round().astype(int)
        for i in idx:
            x = padded[slicers[i]][None].float()
            t0 = time.perf_counter()
            y = net(x)[0] * gauss
            times.append(time.perf_counter() - t0)
            del y
    per = float(np.median(times))
    logits_mb = 2 * 2 * float(np.prod(padded.shape[1:])) / 2**20  # fp16, 2 classes
    row.update(preprocess_s=round(t_pre, 1), patches=n_patches, patch=patch,
               preprocessed_shape=list(data.shape[1:]), s_per_patch=round(per, 2),
               patch_times_s=[round(t, 2) for t in times],
               wall_s=round(t_pre + n_patches * per, 1), measured="preprocess + "
               f"{len(times)} patches; total extrapolated",
               tta_on_s=round(t_pre + n_patches * per * 8, 1),
               peak_rss_mb=round(_peak_rss_mb()),
               peak_rss_note=f"+{logits_mb:.0f} MB fp16 logits buffer in a full run")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patches", type=int, default=3)
    ap.add_argument("--inputs", default="real,synthetic")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("ROW " + json.dumps(child(json.loads(a.child))), flush=True)
        return 0
    from autoprompt_seg.config import default_cache_dir
    from autoprompt_seg.models.nnunet.train import plan_from_fingerprint, random_model_folder

    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_nnunet_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plans = plan_from_fingerprint([FINGERPRINT_SPACING] * 8, [FINGERPRINT_SHAPE] * 8,
                                  work_dir=work)
    print(f"planned in {time.perf_counter() - t0:.0f} s (nnU-Net planners, lung-CT "
          f"fingerprint)", file=sys.stderr)
    models = {
        "detector": random_model_folder(work / "detector", plans["detector"], "3d_detector",
                                        plans["dataset_json"], seed=0),
        "3d_fullres": random_model_folder(work / "fullres", plans["nnunet_default"],
                                          "3d_fullres", plans["dataset_json"], seed=0),
    }
    rows = []
    for inp in a.inputs.split(","):
        for kind, model in models.items():
            job = {"input": inp, "kind": kind, "model": str(model), "threads": a.threads,
                   "patches": a.patches, "cache": str(default_cache_dir())}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                                  capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            if proc.returncode != 0 or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(line[0][4:])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("| input | model | patch | patches | wall s (TTA off) | TTA on s | peak RSS MB "
          "| measured |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tta = r.get("tta_on_s", "")
        if r["model"] == "detector":
            tta = f"{r['wall_s'] + 7 * r['patches'] * r['s_per_patch']:.1f} (extrap.)"
        else:
            tta = f"{tta} (extrap.)"
        print(f"| {r['input']} {r['shape_zyx']} | {r['model']} | {r['patch']} | {r['patches']} "
              f"| {r['wall_s']} | {tta} | {r['peak_rss_mb']} | {r['measured']} |")
    for inp in a.inputs.split(","):
        d = next(r for r in rows if r["input"] == inp and r["model"] == "detector")
        f = next(r for r in rows if r["input"] == inp and r["model"] == "3d_fullres")
        ratio = d["wall_s"] / f["wall_s"]
        print(f"\n{inp}: detector / 3d_fullres (TTA off) = {ratio:.4f} "
              f"({'meets' if ratio <= 0.05 else 'misses'} the <= 0.05 target)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
