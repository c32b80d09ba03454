"""A seeded whole-chest phantom for detector tests (heart, z-tube, nodule; exact truth)."""

from __future__ import annotations

import numpy as np

from autoprompt_seg.types import Volume


def thorax_phantom(seed=0, heart=True, tube=True, nodule=True):
    """A seeded chest: body, two lungs, a mediastinum; a heart bulging into the left lung,
    an SVC-like z-tube against the right lung, a round nodule in the right lung."""
    rng = np.random.default_rng(seed)
    sp = (2.5, 1.5, 1.5)
    nz, ny, nx = 80, 180, 240
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((nz, ny, nx), sp)), indexing="ij")
    cy, cx = ny * sp[1] / 2, nx * sp[2] / 2
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    body = ((y - cy) / 120) ** 2 + ((x - cx) / 170) ** 2 <= 1
    hu[body] = -80.0  # fat and muscle
    lz = (z - 100) / 95
    rl = (((y - cy) / 85) ** 2 + ((x - (cx - 75)) / 60) ** 2 + lz ** 2) <= 1
    ll = (((y - cy) / 85) ** 2 + ((x - (cx + 75)) / 60) ** 2 + lz ** 2) <= 1
    hu[rl | ll] = -850.0
    med = body & ~(rl | ll) & (np.abs(x - cx) < 40)
    hu[med & (hu > -500)] = 35.0
    truth = {}
    if heart:
        h = ((z - 70) / 45) ** 2 + ((y - (cy + 20)) / 50) ** 2 + ((x - (cx + 25)) / 50) ** 2 <= 1
        hu[h] = 40.0
        truth["heart"] = h
    if tube:
        t = (((y - (cy - 20)) / 9) ** 2 + ((x - (cx - 22)) / 9) ** 2 <= 1) & (z > 60) & (z < 190)
        hu[t] = 40.0
        truth["tube"] = t
    if nodule:
        n = ((z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx - 95)) ** 2) <= 9 ** 2
        hu[n] = 30.0
        truth["nodule"] = n
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    vol = Volume(array=hu.astype(np.float32), spacing=sp, origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, truth
