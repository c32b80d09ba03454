#!/usr/bin/env python
"""Cost of the medsam2 segmenter against MedSAM2's reference procedure, in the same run.

Cases (each path of each case runs in a fresh subprocess, so that peak RSS = that
process's ru_maxrss):

* ``pat4``   -- the real lung CT of pycerr pat_4 (56 slices of 172x178), one box from its
                RTSTRUCT GTV-1 (oracle prompts);
* ``synth1`` -- a seeded synthetic chest CT of 300 slices of 512x512, one tumour;
* ``synth3`` -- the same geometry with three tumours.

Paths: ``ours`` (``autoprompt_seg.models.medsam2``) and ``reference`` (the straightforward
procedure of ``tests/medsam2_reference.py``: whole volume forward, reset, reverse, union,
largest component, float64 frames, no feature sharing).

The reference costs about 2 x (encoder + tracking step) per slice per lesion on this CPU, so
on 300 slices it runs for many minutes. ``--slices N`` runs it on a z-crop of N slices of
the synthetic studies (boxes moved into the crop; its cost does not depend on the content,
since every lesion visits every slice in both directions) and extrapolates its run time and
peak RSS linearly to 300 slices. The table says which figures are measured and which are
extrapolated. ``--slices 0`` measures the reference on the full volume.

    .venv/bin/python scripts/bench_medsam2.py                       # CPU, all cases
    .venv/bin/python scripts/bench_medsam2.py --device cuda --slices 0
    .venv/bin/python scripts/bench_medsam2.py --cases synth1 --paths ours --json out.json

Random weights (seeded, MedSAM2's exact format) are generated unless ``--checkpoint`` is
given: costs do not depend on the weights' values, apart from where "ours" stops early.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_medsam2")

SYNTH_SHAPE = (300, 512, 512)
SYNTH_SPACING = (1.0, 0.7, 0.7)
CASES = ("pat4", "synth1", "synth3")
PATHS = ("ours", "reference")


# --------------------------------------------------------------------------- data


def _boxes_from_labels(labels: np.ndarray, n: int) -> list[dict[str, int]]:
    out = []
    for i in range(1, n + 1):
        lab = labels == i
        z, y, x = np.nonzero(lab)
        key = int(np.argmax(lab.sum(axis=(1, 2))))
        out.append({"z0": int(z.min()), "z1": int(z.max()) + 1, "y0": int(y.min()),
                    "y1": int(y.max()) + 1, "x0": int(x.min()), "x1": int(x.max()) + 1,
                    "key_slice": key})
    return out


def prepare(case: str, workdir: Path, seed: int) -> Path:
    """Write ``case.npz`` (hu, spacing, boxes as JSON) once; return its path."""
    out = workdir / f"{case}.npz"
    if out.exists():
        return out
    if case == "pat4":
        from autoprompt_seg.config import Settings, default_cache_dir
        from autoprompt_seg.data import pycerr_study
        from autoprompt_seg.detect.oracle import create as oracle
        from autoprompt_seg.io.dicom import load_study

        study = pycerr_study("pat_4", default_cache_dir())
        vol, _ = load_study(study)
        det = oracle(Settings(options={"prompts_from": str(study), "roi_name": "GTV-1"}))
        boxes = [b.to_dict() for b in det.detect(vol)]
        hu, spacing = vol.array, vol.spacing
    else:
        from autoprompt_seg.synthetic import synthetic_chest

        n = 1 if case == "synth1" else 3
        ch = synthetic_chest(SYNTH_SHAPE, SYNTH_SPACING, n_tumours=n, seed=seed)
        hu, spacing = ch.hu, ch.spacing
        boxes = _boxes_from_labels(ch.labels, n)
    np.savez(out, hu=hu.astype(np.float32), spacing=np.asarray(spacing),
             boxes=json.dumps([{k: b[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1",
                                                  "key_slice")} for b in boxes]))
    return out


def crop_z(hu: np.ndarray, boxes: list[dict[str, int]], n: int
           ) -> tuple[np.ndarray, list[dict[str, int]]]:
    """The first lesion's slab of ``n`` slices; every box moved into it (x, y kept)."""
    if n <= 0 or n >= hu.shape[0]:
        return hu, boxes
    k = boxes[0]["key_slice"]
    z0 = int(np.clip(k - n // 2, 0, hu.shape[0] - n))
    moved = []
    for i, b in enumerate(boxes):
        depth = min(b["z1"] - b["z0"], n)
        nz0 = int(np.clip(b["z0"] - z0, 0, n - depth)) if i == 0 else \
            int((i * n) // (len(boxes) + 1))
        nz0 = min(nz0, n - depth)
        key = nz0 + min(b["key_slice"] - b["z0"], depth - 1)
        moved.append(dict(b, z0=nz0, z1=nz0 + depth, key_slice=key))
    return np.ascontiguousarray(hu[z0:z0 + n]), moved


# --------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import resource

    import torch

    from autoprompt_seg.types import Box3D, Volume

    torch.set_num_threads(args.threads)
    data = np.load(args.data)
    hu = data["hu"]
    boxes_d = json.loads(str(data["boxes"]))
    sz, sy, sx = (float(s) for s in data["spacing"])
    spacing = (sz, sy, sx)
    full_slices = hu.shape[0]
    if args.path == "reference" and Path(args.data).stem.startswith("synth"):
        hu, boxes_d = crop_z(hu, boxes_d, args.slices)
    boxes = [Box3D(**b) for b in boxes_d]
    res: dict[str, Any] = {"slices": int(hu.shape[0]), "full_slices": full_slices,
                           "lesions": len(boxes), "hw": list(hu.shape[1:])}
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    if args.path == "ours":
        from autoprompt_seg.config import Settings
        from autoprompt_seg.models.medsam2 import create

        opts: dict[str, Any] = {"medsam2_checkpoint": args.checkpoint}
        if args.no_early_stop:  # the same work as the reference: every slice, both ways
            opts.update(medsam2_empty_stop=10**6, medsam2_z_margin_mm=1e6)
        seg = create(Settings(device=args.device, threads=args.threads, options=opts))
        vol = Volume(array=hu, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                     source_format="synthetic")
        res["load_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        masks = seg.segment(vol, boxes)
        if args.device == "cuda":
            torch.cuda.synchronize()
        res["run_s"] = time.perf_counter() - t1
        st = seg.last_stats
        res.update(encoder_calls=st.encoder_calls, steps=st.visited,
                   distinct_slices=st.distinct_slices, evictions=st.evictions,
                   cache_peak_mb=round(st.cache_peak_mb, 1),
                   voxels=[m.voxel_count for m in masks])
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from autoprompt_seg.models.medsam2 import DEFAULT_WINDOW
        from medsam2_reference import reference_segment, stock_predictor

        pred = stock_predictor(Path(args.checkpoint), args.device)
        res["load_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        whole = np.round(hu) == hu
        ref = reference_segment(pred, hu.astype(np.int16) if whole.all() else hu, boxes,
                                DEFAULT_WINDOW)
        if args.device == "cuda":
            torch.cuda.synchronize()
        res["run_s"] = time.perf_counter() - t1
        res.update(encoder_calls=ref.encoder_calls, steps=ref.tracked,
                   distinct_slices=int(hu.shape[0]),
                   voxels=[int(m.sum()) for m in ref.masks])
    res["wall_s"] = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = ru.ru_utime + ru.ru_stime - cpu0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(res), flush=True)


def run_child(case: str, path: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--path", path,
           "--data", str(data), "--checkpoint", str(args.checkpoint), "--device", args.device,
           "--threads", str(args.threads), "--slices", str(args.slices)]
    if args.no_early_stop:
        cmd.append("--no-early-stop")
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{case}/{path} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    res.update(case=case, path=path, process_s=time.perf_counter() - t0)
    return res


# --------------------------------------------------------------------------- report


def extrapolate(r: dict[str, Any]) -> dict[str, Any]:
    """Scale a cropped reference run to the full z extent (cost is linear in slices)."""
    n, full = r["slices"], r["full_slices"]
    if n >= full:
        return dict(r, extrapolated=False)
    f = full / n
    hw = r["hw"][0] * r["hw"][1]
    per_slice_mb = (3 * 512 * 512 * 8 + hw * 4) / 2**20  # float64 frames + HU
    return dict(r, extrapolated=True, measured_slices=n, slices=full,
                run_s=r["run_s"] * f, wall_s=r["load_s"] + r["run_s"] * f,
                cpu_s=r["cpu_s"] * f,
                encoder_calls=round(r["encoder_calls"] * (full + 2) / (n + 2)),
                steps=round(r["steps"] * full / n), distinct_slices=full,
                peak_rss_mb=r["peak_rss_mb"] + (full - n) * per_slice_mb)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'case':<7} {'path':<10} {'slices':>6} {'les':>3} {'wall s':>8} {'run s':>8} "
            f"{'cpu s':>8} {'enc calls':>9} {'steps':>6} {'s/step':>7} {'peak RSS MB':>11}  "
            f"figures")
    lines = [head, "-" * len(head)]
    for r in rows:
        how = (f"extrapolated from {r['measured_slices']} measured slices" if r.get("extrapolated")
               else "measured")
        lines.append(f"{r['case']:<7} {r['path']:<10} {r['slices']:>6} {r['lesions']:>3} "
                     f"{r['wall_s']:>8.1f} {r['run_s']:>8.1f} {r['cpu_s']:>8.1f} "
                     f"{r['encoder_calls']:>9} "
                     f"{r['steps']:>6} {r['run_s'] / max(r['steps'], 1):>7.2f} "
                     f"{r['peak_rss_mb']:>11.0f}  {how}")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["case"], r["path"]): r for r in rows}
    out = []
    for case, target in (("synth1", 3.0), ("synth3", 5.0), ("pat4", None)):
        o, ref = by.get((case, "ours")), by.get((case, "reference"))
        if o and ref:
            sp = ref["run_s"] / o["run_s"]
            sp_cpu = ref["cpu_s"] / o["cpu_s"]
            sp_steps = (ref["encoder_calls"] + ref["steps"]) / (o["encoder_calls"] + o["steps"])
            kind = "extrapolated reference" if ref.get("extrapolated") else "measured"
            goal = (f" (target >= {target:.0f}x on wall time: "
                    f"{'met' if sp >= target else 'MISSED'})") if target else ""
            out.append(f"{case}: ours {sp:.1f}x faster than the reference in wall time, "
                       f"{sp_cpu:.1f}x in CPU time, {sp_steps:.1f}x fewer encoder calls + "
                       f"tracking steps ({kind}){goal}")
        if o and case.startswith("synth"):
            ok = o["peak_rss_mb"] <= 3072
            out.append(f"{case}: ours peak RSS {o['peak_rss_mb']:.0f} MB for "
                       f"{o['hw'][0]}x{o['hw'][1]}x{o['slices']} (target <= 3072 MB: "
                       f"{'met' if ok else 'MISSED'}, measured)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: scripts/bench_medsam2.py --slices 30")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--slices", type=int, default=30,
                    help="reference: z-crop of the synthetic studies (0 = full volume)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--checkpoint", default=None, help="default: a seeded random checkpoint")
    ap.add_argument("--seed", type=int, default=7, help="synthetic study seed")
    ap.add_argument("--workdir", default=None, help="cache of prepared studies")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--no-early-stop", action="store_true",
                    help="ours visits every slice in both directions, as the reference")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate the paths of each case this many times (ours, reference, "
                         "ours, ...) and report each run and the median ratio")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "bench_medsam2")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        ck = workdir / "random_medsam2_seed0.pt"
        if not ck.exists():
            import torch

            from autoprompt_seg.models.medsam2 import build_model

            torch.manual_seed(0)
            torch.save({"model": build_model("cpu").state_dict()}, ck)
        args.checkpoint = str(ck)
    cases = [c for c in args.cases.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"--cases: unknown case {c!r}; known: {', '.join(CASES)}")
    rows = []
    for case in cases:
        data = prepare(case, workdir, args.seed)
        for rep in range(args.repeat):
            for path in paths:
                log.info("running %s / %s on %s (%d/%d) ...", case, path, args.device, rep + 1,
                         args.repeat)
                r = run_child(case, path, data, args)
                if path == "reference":
                    r = extrapolate(r)
                r["repeat"] = rep + 1
                log.info("  %s", json.dumps({k: r[k] for k in (
                    "wall_s", "run_s", "cpu_s", "encoder_calls", "steps", "peak_rss_mb")}))
                rows.append(r)
    if args.repeat > 1 and set(paths) == set(PATHS):
        for case in cases:
            o = [r for r in rows if r["case"] == case and r["path"] == "ours"]
            f = [r for r in rows if r["case"] == case and r["path"] == "reference"]
            ratios = [a["run_s"] / b["run_s"] for a, b in zip(o, f, strict=True)]
            log.info("%s: ours/reference run time per alternation: %s; median %.2f "
                     "(< 1: ours faster)", case, ", ".join(f"{x:.2f}" for x in ratios),
                     float(np.median(ratios)))
    dev = args.device
    if dev == "cuda":
        import torch

        dev = f"cuda ({torch.cuda.get_device_name(0)}, bf16 autocast)"
    print(f"\nmedsam2 cost, device {dev}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; checkpoint {Path(args.checkpoint).name}")
    print(table(rows))
    print("s/step = run seconds per tracking step (one lesion, one direction, one slice); "
          "run s excludes model loading; cpu s = user+sys CPU seconds of the process (less "
          "sensitive than wall time to other load on the machine).")
    for v in verdicts(rows):
        print(v)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
