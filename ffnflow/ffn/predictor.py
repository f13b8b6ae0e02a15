"""Forward passes of an FFN over FOVs, on CUDA when available, else on the CPU."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"ffn.device {device!r}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"ffn.device {device!r}: {exc}") from exc


class FovPredictor:
    """Evaluates an FFN on batches of FOVs given as numpy arrays ``(N, z, y, x)``.

    ``precision`` is ``fp32`` or an autocast type (``bf16``, ``fp16``); the returned logits
    are always float32. ``threads`` sets torch's intra-op threads on the CPU.
    """

    def __init__(
        self,
        model: ConvStack3D,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"ffn.precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        self.device = resolve_device(device)
        self.precision = precision
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))
        self.model = model.to(self.device).eval()
        self.fov_size_zyx = model.arch.fov_size_zyx
        self.deltas_zyx = model.arch.deltas_zyx
        self.fov_evaluations = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def predict(self, image: np.ndarray, pom_logits: np.ndarray) -> np.ndarray:
        """New POM logits for FOVs of normalised ``image`` and current ``pom_logits``."""
        with torch.inference_mode():
            img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            pom = torch.from_numpy(np.ascontiguousarray(pom_logits, dtype=np.float32))
            img = img[:, None].to(self.device, non_blocking=True)
            pom = pom[:, None].to(self.device, non_blocking=True)
            with self._autocast():
                out = self.model(img, pom)
            self.fov_evaluations += image.shape[0]
            return out[:, 0].float().cpu().numpy()
