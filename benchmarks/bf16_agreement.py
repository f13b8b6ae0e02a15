"""Where the bf16 / fp32 disagreement of flood filling comes from (issue 5 experiments).

On the parity crop (``../shared/data/google_ffn_crop.h5``, 100^3, FIB-25 model, reference
options) each named variant segments with the sequential canvas and is compared with the
fp32 reference segmentation ``google_seg`` (which ffnflow's fp32 run reproduces exactly):
ARAND and VI with label 0 counted. Variants (arguments, any number, run in order):

- ``bf16``: bf16 inner convolutions (ffnflow's ``ffn.precision: bf16``);
- ``noiseS``: fp32 with Gaussian noise of S logits added to every FOV's output;
- ``threshM``: bf16, re-run in fp32 when a face max or the FOV centre is within M logits
  of the move threshold;
- ``verifyM``: as ``threshM``, and also when two face maxima differ by less than M.

Usage: python benchmarks/bf16_agreement.py bf16 noise0.02 thresh0.3 verify0.03
Measured results (2-core CPU, 2026-11-27) are in benchmarks/results/bf16_agreement.txt.
"""

import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from scipy.special import logit

from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.movement import face_max_moves
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import sobel_peak_seeds

REPO = Path(__file__).resolve().parents[1]
with h5py.File(REPO.parent / "shared" / "data" / "google_ffn_crop.h5", "r") as f:
    raw = f["raw"][...]
    ref = f["google_seg"][...]
loaded = load_checkpoint(REPO / "models" / "ffn_fib25_google.pt")
image = (raw.astype(np.float32) - 128) / 33
seeds = [tuple(int(v) for v in s) for s in sobel_peak_seeds(image)]
opts = InferenceOptions()
MOVE = float(logit(0.9))


class Noisy:
    def __init__(self, p, sigma, seed=0):
        self.p, self.sigma, self.rng = p, sigma, np.random.default_rng(seed)
        self.fov_size_zyx, self.deltas_zyx = p.fov_size_zyx, p.deltas_zyx

    def predict(self, image, pom):
        out = self.p.predict(image, pom)
        return out + self.rng.normal(0, self.sigma, out.shape).astype(np.float32)


class Verifying:
    """Fast prediction; exact re-evaluation when a movement decision is within margin."""

    def __init__(self, fast, exact, margin, order=True):
        self.fast, self.exact, self.margin, self.order = fast, exact, margin, order
        self.fov_size_zyx, self.deltas_zyx = fast.fov_size_zyx, fast.deltas_zyx
        self.n = self.redo = 0

    def marginal(self, logits):
        # every face max, not only those above threshold
        cands = face_max_moves(logits, self.deltas_zyx, -1e9)
        scores = sorted(s for s, _ in cands)
        if any(abs(s - MOVE) < self.margin for s in scores):
            return True
        if self.order and any(
            0 < b - a < self.margin for a, b in zip(scores, scores[1:]) if b >= MOVE - self.margin
        ):
            return True
        c = tuple(np.array(logits.shape) // 2)
        return abs(logits[c] - MOVE) < self.margin

    def predict(self, image, pom):
        out = self.fast.predict(image, pom)
        self.n += 1
        if self.marginal(out[0]):
            self.redo += 1
            out = self.exact.predict(image, pom)
        return out


def run(name, pred):
    t = time.perf_counter()
    res = Canvas(image, pred, opts).segment_all(seeds)
    w = time.perf_counter() - t
    a = segmentation_metrics(ref, res.labels, ignore_gt_zero=False)
    extra = {}
    if isinstance(pred, Verifying):
        extra = {"redo_fraction": round(pred.redo / max(pred.n, 1), 3)}
    print(
        name,
        json.dumps(
            {
                "wall_s": round(w, 1),
                "fovs": int(res.counters["fov_evaluations"]),
                "segments": len(res.origins),
                "arand": round(a["arand"], 4),
                "vi_split": round(a["vi_split"], 4),
                "vi_merge": round(a["vi_merge"], 4),
                **extra,
            }
        ),
        flush=True,
    )
    return res


fp32 = FovPredictor(loaded.model, "cpu", "fp32", 2)
bf16 = FovPredictor(loaded.model, "cpu", "bf16", 2)
which = sys.argv[1:]
for w in which:
    if w.startswith("noise"):
        run(w, Noisy(fp32, float(w[5:])))
    elif w == "bf16":
        run(w, bf16)
    elif w.startswith("thresh"):
        run(w, Verifying(bf16, fp32, float(w[6:]), order=False))
    elif w.startswith("verify"):
        run(w, Verifying(bf16, fp32, float(w[6:])))
