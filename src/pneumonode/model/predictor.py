"""Inference: a loaded network that turns a prepared radiograph into a mask and a finding.

The Predictor is created once per worker process and reused. Threads may share it: the network
runs one image at a time (a lock: each run already uses every core the process may use), while
pre- and post-processing run in the calling threads. An inference engine runs the network; three
backends are available:

``torch``
    The PyTorch model, in float32, or in bfloat16 autocast with channels-last memory on CPUs
    with native bf16 (avx512_bf16 / AMX) and on CUDA (fp16 too there).
``onnxruntime``
    ONNX Runtime on the CPU, float32.
``openvino``
    OpenVINO on the CPU: bfloat16 where the CPU computes it natively
    (``INFERENCE_PRECISION_HINT``), float32 otherwise or when ``precision="fp32"`` is asked.
``auto`` (the default)
    CUDA: torch. CPU: the fastest installed, measured with ``bench/inference.py`` (EfficientNet-B4
    U-Net, 1024 px, one image): openvino (bf16 ~0.5 s on an avx512_bf16 CPU; in float32 it also
    beats onnxruntime and torch), then onnxruntime, then torch.

The ONNX and OpenVINO backends run an ONNX export of the checkpoint (opset 17, dynamic batch,
the checkpoint's ``input.size`` fixed), made once with torch and cached *beside the checkpoint*
(``model.onnx`` and ``model.onnx.json``, the manifest that keys it by the weights' sha256), or
under ``<cache_dir>/<sha256[:16]>/`` when the checkpoint's folder is not writable. A new
checkpoint (other sha256, size or architecture) is exported again. Once the export exists, these
backends do not run or import torch here: only ``config.json``, the weights' hash and the ONNX
file are read (``pneumonode.model.checkpoint`` itself still imports torch at module level).

Then it optionally averages a horizontal flip (TTA), applies the checkpoint's threshold and
minimum component area at model resolution, and maps the mask back onto the source's Rows x
Columns.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import cv2
import numpy as np
from pydicom import Dataset

from pneumonode.conversion import PreparedImage, prepare_radiograph, read_dataset
from pneumonode.conversion.decode import DatasetSource
from pneumonode.conversion.prepare import prepare_8bit_image
from pneumonode.findings import Finding
from pneumonode.model.postprocess import binary_mask, summarise

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pneumonode.model.checkpoint import CheckpointConfig

__all__ = [
    "EXPORT_OPSET",
    "Backend",
    "BackendUnavailableError",
    "InferenceEngine",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "Precision",
    "Prediction",
    "Predictor",
    "TorchEngine",
    "available_backends",
    "choose_backend",
    "cpu_supports_bf16",
    "export_onnx",
    "exported_onnx",
    "resolve_device",
]

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Backend = Literal["auto", "torch", "onnxruntime", "openvino"]
EXPORT_OPSET = 17
#: Preference of ``backend="auto"`` on the CPU, fastest first (see bench/inference.py).
CPU_PREFERENCE: tuple[str, ...] = ("openvino", "onnxruntime", "torch")


class BackendUnavailableError(ValueError):
    """The asked backend cannot run here: not installed, wrong device or unsupported precision."""


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
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def available_backends() -> tuple[str, ...]:
    """The backends whose packages are installed (torch is always: it makes the export)."""
    return ("torch", *(name for name in ("onnxruntime", "openvino") if find_spec(name)))


def _gpu_present() -> bool:
    """Whether a CUDA GPU may be there; without importing torch when there is plainly none."""
    if sys.platform == "linux" and not any(
        Path(node).exists() for node in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(backend: str, device: str = "auto", precision: str = "auto") -> str:
    """The backend that will run: ``auto`` resolved, and the asked one checked for this host.

    Raises:
        BackendUnavailableError: the backend's package is missing or it cannot run on
            ``device`` / at ``precision``.
    """
    choices = get_args(Backend)
    if backend not in choices:
        raise BackendUnavailableError(
            f"unknown backend {backend!r}; choose one of {', '.join(choices)}"
        )
    installed = available_backends()
    if backend == "auto":
        wants_cuda = device.startswith("cuda") or (device == "auto" and _gpu_present())
        if wants_cuda or precision == "fp16":
            return "torch"
        return next(name for name in CPU_PREFERENCE if name in installed)
    if backend != "torch":
        if backend not in installed:
            raise BackendUnavailableError(
                f"backend {backend!r} is not installed (pip install {backend}); installed: "
                f"{', '.join(installed)}"
            )
        if device.startswith("cuda"):
            raise BackendUnavailableError(
                f"the {backend} backend runs on the CPU here; use the torch backend for {device}"
            )
        if precision == "fp16":
            raise BackendUnavailableError(
                f"fp16 needs CUDA and the torch backend; {backend} runs fp32 or bf16 on the CPU"
            )
        if backend == "onnxruntime" and precision == "bf16":
            raise BackendUnavailableError(
                "onnxruntime runs float32 here; for bfloat16 use the openvino or torch backend"
            )
    return backend


# ------------------------------------------------------------------------------ engines


class InferenceEngine(ABC):
    """Runs the network. Not thread-safe: one engine per worker thread.

    Attributes:
        backend: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: what it computes in: ``fp32``, ``bf16`` or ``fp16``.
        device: ``cpu`` or ``cuda:N``.
    """

    backend: str
    precision: str
    device: str = "cpu"

    @abstractmethod
    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 1, S, S) float32 in [0, 1] -> pixel logits (N, 1, S, S) float32, and the image
        logits (N,) of a network with an image-level head (None without one)."""

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Shape: (N, 1, S, S) float32 in [0, 1] -> (N, 1, S, S) float32 logits."""
        return self.outputs(batch)[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Shape: (N, 1, S, S) float32 in [0, 1] -> (N, S, S) float32 probabilities."""
        return _sigmoid(self.logits(batch)[:, 0])

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixel probabilities (N, S, S) and the head's image probabilities (N,) or None."""
        pixels, image = self.outputs(batch)
        return _sigmoid(pixels[:, 0]), None if image is None else _sigmoid(image)


class TorchEngine(InferenceEngine):
    """The PyTorch model: float32, or bf16/fp16 autocast with channels-last memory."""

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        threads: int | None = None,
    ) -> None:
        import torch

        self._device = resolve_device(device)
        self.device = str(self._device)
        if precision == "auto":
            native = self._device.type == "cuda" or cpu_supports_bf16()
            precision = "bf16" if native else "fp32"
        if precision == "fp16" and self._device.type != "cuda":
            raise BackendUnavailableError(
                "fp16 inference needs a CUDA device; use bf16 or fp32 on the CPU"
            )
        self.precision = precision
        if threads:
            torch.set_num_threads(threads)
        model = model.eval().to(self._device)
        if precision != "fp32":
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _run(self, batch: np.ndarray, sigmoid: bool) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
        if self.precision != "fp32":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with (
            torch.inference_mode(),
            torch.autocast(
                self._device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ),
        ):
            out = self.model(x)
            y, label = (out[0], out[1][:, 0].float()) if isinstance(out, tuple) else (out, None)
            y = y.float()
            if sigmoid:  # on the device: on a GPU, numpy's sigmoid on the host took longer
                y = torch.sigmoid(y[:, 0])  # than the network (batch 32 at 1024 px)
                label = None if label is None else torch.sigmoid(label)
            result: np.ndarray = y.cpu().numpy()
        return result, None if label is None else label.cpu().numpy()

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._run(batch, sigmoid=False)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, sigmoid=True)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._run(batch, sigmoid=True)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxRuntimeEngine(InferenceEngine):
    """ONNX Runtime's CPU provider on an exported model, float32. Needs no torch."""

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, onnx_path: Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False  # b4 at 1024: peak RSS 1.19 -> 0.90 GB, same speed
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        results = self.session.run(None, {self._input: x})
        image = np.asarray(results[1], np.float32)[:, 0] if len(results) > 1 else None
        return np.asarray(results[0], np.float32), image


class OpenVinoEngine(InferenceEngine):
    """OpenVINO on the CPU, reading the exported ONNX model. Needs no torch.

    ``precision``: ``auto`` is bf16 where the CPU reports native BF16, else fp32; ``fp32`` is
    exact float32 (OpenVINO would otherwise pick bf16 on such CPUs by itself).
    """

    backend = "openvino"

    def __init__(
        self, onnx_path: Path, *, precision: Precision = "auto", threads: int | None = None
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError(
                "openvino is not installed (pip install openvino)"
            ) from None
        core = ov.Core()
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "auto":
            precision = "bf16" if native_bf16 else "fp32"
        if precision == "bf16" and not native_bf16:
            raise BackendUnavailableError(
                "this CPU has no native bfloat16 (avx512_bf16 / AMX); use precision fp32"
            )
        if precision not in ("fp32", "bf16"):
            raise BackendUnavailableError(
                f"openvino runs fp32 or bf16 on the CPU, not {precision}; fp16 needs torch + CUDA"
            )
        self.precision = precision
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or _cores(),
        }
        if "TBB_PARTITIONER" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
            # each layer's work taken in chunks as threads come free, not split evenly up front:
            # when another thread of the node takes a core, the network's other thread goes
            # on with the rest instead of waiting (B4 at 1024 px, 2 cores: 1 % faster alone,
            # 3 % beside a thread using a tenth of a core)
            config["TBB_PARTITIONER"] = "AUTO"
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self._request = self.compiled.create_infer_request()

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        result = self._request.infer({0: x}, share_inputs=False, share_outputs=False)
        image = (
            np.asarray(result[1], dtype=np.float32)[:, 0]
            if len(self.compiled.outputs) > 1
            else None
        )
        return np.asarray(result[0], dtype=np.float32), image


# ------------------------------------------------------------------------------- export


def export_onnx(
    model: nn.Module, path: Path, size: int, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model`` as ONNX: input ``image`` (N, 1, size, size) float32 -> ``logits`` (and
    ``image_logit`` (N, 1) for a network with an image-level head).

    Opset 17, dynamic batch, spatial size fixed, float32, via torch's TorchScript exporter (no
    onnxscript needed). ``metadata`` goes into the model's metadata_props. Written to a
    temporary file and renamed, so a reader never sees half a file. Returns ``path``.
    """
    import torch

    model = model.eval().float().cpu()
    with torch.no_grad():
        two = isinstance(model(torch.zeros(1, 1, size, size)), tuple)
    outputs = ["logits", "image_logit"] if two else ["logits"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # legacy-exporter notice, constant-folding notes
            torch.onnx.export(
                model,
                (torch.zeros(1, 1, size, size),),
                str(tmp),
                dynamo=False,
                opset_version=EXPORT_OPSET,
                input_names=["image"],
                output_names=outputs,
                dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                do_constant_folding=True,
            )
        if metadata and find_spec("onnx"):
            import onnx

            proto = onnx.load(str(tmp))
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            proto.producer_name = "pneumonode"
            onnx.save(proto, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _checkpoint_files(path: Path) -> tuple[CheckpointConfig, Path]:
    """The checkpoint's config and weights file, read without building the network."""
    from pydantic import ValidationError

    from pneumonode.model.checkpoint import CONFIG_NAME, CheckpointConfig, CheckpointError

    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix in (".pth", ".pt", ".bin"):
        return CheckpointConfig(name=path.stem), path
    folder = path if path.is_dir() else path.parent
    try:
        config = CheckpointConfig.model_validate_json((folder / CONFIG_NAME).read_text())
    except (OSError, ValidationError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: invalid checkpoint config ({exc})"
        ) from None
    weights = folder / config.weights_file
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    return config, weights


def _manifest_key(config: CheckpointConfig, sha256: str) -> dict[str, Any]:
    return {
        "weights_sha256": sha256,
        "input_size": config.input.size,
        "architecture": config.architecture.model_dump(mode="json"),
        "opset": EXPORT_OPSET,
    }


def _valid_export(onnx_path: Path, key: dict[str, Any]) -> bool:
    try:
        manifest = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return onnx_path.is_file() and all(manifest.get(k) == v for k, v in key.items())


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            return True
    except OSError:
        return False


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumonode" / "exports"


def exported_onnx(weights: Path, *, cache_dir: Path | None = None) -> tuple[Path, CheckpointConfig]:
    """The checkpoint's ONNX export, made (with torch) only when no valid one is cached.

    Looked up beside the weights (``<stem>.onnx`` + ``<stem>.onnx.json``), then under
    ``<cache_dir>/<sha256[:16]>/``; a new one is written beside the weights when that folder is
    writable, else under ``cache_dir`` (default ``$XDG_CACHE_HOME/pneumonode/exports``).
    Returns the ONNX path and the checkpoint's config.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or does not fit its network.
        BackendUnavailableError: no writable place for the export.
    """
    from pneumonode.model.checkpoint import CheckpointError, file_sha256, load_checkpoint

    config, weights_file = _checkpoint_files(weights)
    sha256 = file_sha256(weights_file)
    if config.weights_sha256 and sha256 != config.weights_sha256:
        raise CheckpointError(
            f"{weights_file}: sha256 differs from config.json (damaged or replaced)"
        )
    key = _manifest_key(config, sha256)
    name = f"{weights_file.stem}.onnx"
    beside = weights_file.parent / name
    cached = (cache_dir or _default_cache_dir()) / sha256[:16] / name
    for candidate in (beside, cached):
        if _valid_export(candidate, key):
            return candidate, config

    target = beside if _writable(beside.parent) else cached
    if target is cached and not _writable(cached.parent):
        raise BackendUnavailableError(
            f"cannot cache the ONNX export: neither {beside.parent} nor {cached.parent} is "
            "writable; pass a writable cache_dir"
        )
    log.info("exporting %s to %s (once per checkpoint)", weights_file.name, target)
    model, loaded = load_checkpoint(weights)
    export_onnx(
        model,
        target,
        config.input.size,
        {"weights_sha256": sha256, "name": loaded.name, "version": loaded.version},
    )
    manifest = target.with_name(target.name + ".json")
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**key, "checkpoint": loaded.name, "version": loaded.version}))
    tmp.replace(manifest)
    return target, config


# ---------------------------------------------------------------------------- predictor


def mirror_average(
    outputs: tuple[np.ndarray, np.ndarray | None], mirrored: tuple[np.ndarray, np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean of the outputs on a batch and on its mirror image (pixel maps flipped back);
    the image probabilities are averaged where both have them."""
    (pixels, image), (flip_pixels, flip_image) = outputs, mirrored
    averaged = None if image is None or flip_image is None else (image + flip_image) / 2
    return (pixels + flip_pixels[..., ::-1]) / 2, averaged


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function, float32."""
    result: np.ndarray = (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32, copy=False)
    return result


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
    """A network ready for inference, with its checkpoint's pre- and post-processing.

    ``model`` is a torch module (run by the torch backend, as before) or a ready
    :class:`InferenceEngine`; ``device`` and ``precision`` apply to a torch module only.
    ``tta``: average every output with the mirror image's, also where the checkpoint's
    ``postprocess.flip_average`` (chosen by ``pneumonode calibrate``) does not ask for it.
    """

    def __init__(
        self,
        model: nn.Module | InferenceEngine,
        config: CheckpointConfig,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        tta: bool = False,
    ) -> None:
        self.config = config
        self.tta = tta or config.postprocess.flip_average
        if isinstance(model, InferenceEngine):
            self.engine = model
        else:
            self.engine = TorchEngine(model, device=device, precision=precision)
        self._engine_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        weights: Path,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        tta: bool = False,
        backend: Backend = "auto",
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """Load a checkpoint (folder, config.json, weights file or seed ``.pth``) for inference.

        Args:
            backend: ``auto`` (CUDA: torch; CPU: openvino, else onnxruntime, else torch),
                ``torch``, ``onnxruntime`` or ``openvino`` (see the module docstring).
            cache_dir: where the ONNX export goes when the checkpoint's folder is read-only.
            threads: CPU threads (default: all this process may use).

        Raises:
            CheckpointError: the checkpoint is missing, damaged or does not fit.
            BackendUnavailableError: the backend is not installed or cannot run as asked.
        """
        from pneumonode.model.checkpoint import CheckpointError, load_checkpoint

        chosen = choose_backend(backend, device, precision)
        engine: InferenceEngine | None = None
        if chosen != "torch":
            try:
                onnx_path, config = exported_onnx(weights, cache_dir=cache_dir)
                engine = (
                    OnnxRuntimeEngine(onnx_path, threads=threads)
                    if chosen == "onnxruntime"
                    else OpenVinoEngine(onnx_path, precision=precision, threads=threads)
                )
            except CheckpointError:
                raise
            except Exception as exc:
                if backend != "auto":
                    raise
                log.warning("%s backend unavailable (%s); falling back to torch", chosen, exc)
        if engine is None:
            model, config = load_checkpoint(weights)
            engine = TorchEngine(model, device=device, precision=precision, threads=threads)
        log.info("inference: %s %s on %s", engine.backend, engine.precision, engine.device)
        return cls(engine, config, tta=tta)

    def set_operating_point(self, threshold: float) -> None:
        """Call films positive from ``threshold`` on (calibrated probability) instead of the
        checkpoint's own operating point.

        Raises ValueError for a model without a calibrated probability.
        """
        from pneumonode.model.checkpoint import Decision

        if self.config.calibration is None:
            raise ValueError(
                f"{self.config.name} has no calibrated probability to set an operating point "
                "on (pneumonode calibrate makes one)"
            )
        decision = Decision(threshold=threshold, rule="set by PNEUMONODE_OPERATING_POINT")
        self.config = self.config.model_copy(update={"decision": decision})

    @property
    def size(self) -> int:
        return self.config.input.size

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def device(self) -> str:
        return self.engine.device

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Pixel probabilities. Shape: (N, 1, size, size) float32 in [0, 1] -> (N, size, size)."""
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixel probabilities (N, size, size) and, for a network with an image-level head, its
        (uncalibrated) image probabilities (N,); with ``tta`` both average a horizontal flip."""
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a batch shaped (N, 1, H, W), got {batch.shape}")
        if self.engine.backend != "torch" and batch.shape[2:] != (self.size, self.size):
            raise ValueError(
                f"the {self.engine.backend} export takes {self.size}x{self.size} images, "
                f"got {batch.shape[2]}x{batch.shape[3]}"
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._engine_lock:  # one image at a time: each run takes every core already
            probability, image = self.engine.forward(batch)
            flipped = (
                self.engine.forward(np.ascontiguousarray(batch[..., ::-1])) if self.tta else None
            )
        if flipped is not None:
            probability, image = mirror_average((probability, image), flipped)
        return probability, image

    def image_probability(self, head: float | None, max_pixel: float) -> float:
        """The calibrated probability of a pneumothorax on the film, from the head's score (or
        the top pixel score, as the checkpoint's calibration says); uncalibrated models give
        their raw score."""
        calibration = self.config.calibration
        use_head = head is not None and (calibration is None or calibration.score == "head")
        raw = float(head) if use_head and head is not None else max_pixel
        if calibration is None:
            return raw
        from pneumonode.model.calibration import PlattScaling

        return float(PlattScaling(calibration.a, calibration.b)(raw))

    def predict_prepared(self, prepared: PreparedImage, ds: Dataset | None = None) -> Prediction:
        """Predict one prepared image; ``ds`` gives pixel spacing and orientation.

        With an operating point (``decision`` in the checkpoint) the calibrated probability
        decides, and the mask is reported only for a film called positive: where no pixel
        reaches the pixel threshold on such a film (or only regions under the minimum area), the
        pixels of at least half the film's top probability show where the model looked, whatever
        their area: a film called positive always has a region.
        """
        if prepared.pixels.shape != (self.size, self.size):
            raise ValueError(f"prepared at {prepared.pixels.shape}, the model wants {self.size}")
        pixels, image = self.forward(prepared.tensor()[np.newaxis])
        probability = pixels[0]
        box = prepared.letterbox
        inner = probability[
            box.pad_top : box.pad_top + box.scaled_rows,
            box.pad_left : box.pad_left + box.scaled_cols,
        ]
        top = float(inner.max())
        post = self.config.postprocess
        decision = self.config.decision
        calibrated = self.image_probability(None if image is None else float(image[0]), top)
        if decision is None:
            model_mask = binary_mask(
                probability,
                post.threshold,
                post.min_area_pixels,
                post.top_score_threshold,
                post.grow_threshold,
            )
        elif calibrated >= decision.threshold:
            model_mask = binary_mask(
                probability, post.threshold, post.min_area_pixels, None, post.grow_threshold
            )
            if not model_mask.any():
                model_mask = binary_mask(probability, top / 2)
        else:
            model_mask = np.zeros(probability.shape, dtype=bool)
        mask = prepared.letterbox.to_source(model_mask)
        finding = summarise(
            mask,
            top,
            ds,
            probability=calibrated if (image is not None or self.config.calibration) else None,
            threshold=None if decision is None else decision.threshold,
        )
        return Prediction(probability, mask, finding, prepared)

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
