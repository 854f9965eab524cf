"""Inference: a loaded network that turns a prepared radiograph into a mask and a finding.

The Predictor is created once per worker and reused. It runs the network in float32, or in
bfloat16 autocast with channels-last memory on CPUs with native bf16 (avx512_bf16 / AMX) and on
CUDA, optionally averages a horizontal flip (TTA), applies the checkpoint's threshold and minimum
component area at model resolution, and maps the mask back onto the source's Rows x Columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydicom import Dataset
from torch import nn

from pneumonode.conversion import PreparedImage, prepare_radiograph, read_dataset
from pneumonode.conversion.decode import DatasetSource
from pneumonode.conversion.prepare import prepare_8bit_image
from pneumonode.model.checkpoint import CheckpointConfig, load_checkpoint
from pneumonode.model.postprocess import Finding, binary_mask, summarise

__all__ = ["Precision", "Prediction", "Predictor", "cpu_supports_bf16", "resolve_device"]

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@cache
def cpu_supports_bf16() -> bool:
    """Native bfloat16 arithmetic on this CPU (otherwise bf16 is emulated and slow)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    Attributes:
        probability: float32 (size, size), model space, padding included.
        mask: bool (Rows, Columns), at the source's size.
        finding: present, max probability, area, side.
        prepared: the model input it came from.
    """

    probability: np.ndarray
    mask: np.ndarray
    finding: Finding
    prepared: PreparedImage


class Predictor:
    """A network ready for inference, with its checkpoint's pre- and post-processing."""

    def __init__(
        self,
        model: nn.Module,
        config: CheckpointConfig,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        tta: bool = False,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.tta = tta
        if precision == "auto":
            native = self.device.type == "cuda" or cpu_supports_bf16()
            precision = "bf16" if native else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 inference needs a CUDA device; use bf16 or fp32 on the CPU")
        self.precision: Precision = precision
        model = model.eval().to(self.device)
        if precision != "fp32":
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @classmethod
    def load(
        cls,
        weights: Path,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        tta: bool = False,
    ) -> Predictor:
        model, config = load_checkpoint(weights)
        return cls(model, config, device=device, precision=precision, tta=tta)

    @property
    def size(self) -> int:
        return self.config.input.size

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Pixel probabilities. Shape: (N, 1, size, size) float32 in [0, 1] -> (N, size, size)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.precision != "fp32":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ),
        ):
            logits = self.model(x).float()
            if self.tta:
                flipped = self.model(torch.flip(x, dims=[3])).float()
                probability = (
                    torch.sigmoid(logits) + torch.sigmoid(torch.flip(flipped, dims=[3]))
                ) / 2
            else:
                probability = torch.sigmoid(logits)
        result: np.ndarray = probability[:, 0].cpu().numpy()
        return result

    def predict_prepared(self, prepared: PreparedImage, ds: Dataset | None = None) -> Prediction:
        """Predict one prepared image; ``ds`` gives pixel spacing and orientation."""
        if prepared.pixels.shape != (self.size, self.size):
            raise ValueError(f"prepared at {prepared.pixels.shape}, the model wants {self.size}")
        probability = self.probabilities(prepared.tensor()[np.newaxis])[0]
        post = self.config.postprocess
        model_mask = binary_mask(
            probability, post.threshold, post.min_area_pixels, post.top_score_threshold
        )
        mask = prepared.letterbox.to_source(model_mask)
        box = prepared.letterbox
        inner = probability[
            box.pad_top : box.pad_top + box.scaled_rows,
            box.pad_left : box.pad_left + box.scaled_cols,
        ]
        return Prediction(probability, mask, summarise(mask, float(inner.max()), ds), prepared)

    def predict_dicom(
        self, source: DatasetSource, label: str | None = None, keep_source: bool = True
    ) -> Prediction:
        ds = read_dataset(source, label)
        spec = self.config.input
        prepared = prepare_radiograph(
            ds, spec.size, spec.window_percentiles, label, keep_source=keep_source
        )
        return self.predict_prepared(prepared, ds)

    def predict_image_file(self, path: Path) -> Prediction:
        """A PNG or JPEG radiograph (already windowed, 8-bit grey)."""
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path.name}: not a readable PNG/JPEG image")
        return self.predict_prepared(prepare_8bit_image(image, self.size))

    def predict_path(self, path: Path) -> Prediction:
        """DICOM (by content) or PNG/JPEG (by suffix)."""
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            return self.predict_image_file(path)
        return self.predict_dicom(path)
