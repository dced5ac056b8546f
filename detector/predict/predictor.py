"""Detector: a trained focaldet model, ready to predict on any image.

    from detector import Detector
    det = Detector.from_checkpoint("work_dirs/quickstart/checkpoints/last.pt")   # or Detector(config, checkpoint)
    results = det.predict(["a.jpg", pil_image, hwc_uint8_array, chw_tensor], score_thr=0.3)
    results[0].boxes, results[0].scores, results[0].labels, results[0].class_names

Each input goes through the model's own test pipeline, the evaluation's: resize (shorter side to
``data.test_min_size``, longer side at most ``data.test_max_size``), normalise (``data.mean`` / ``data.std``), pad
to ``data.size_divisor``. Inputs are batched by padded shape (:mod:`detector.predict.streaming`), so each image
is padded to its own canonical shape and its detections do not depend on the other inputs or ``batch_size``
(up to the convolution kernels' own dependence on the batch size, ~1e-6 on the CPU). Boxes come back in the
input image's pixels, clipped to it. With test-time augmentation (``tta=``, or the config's ``evaluation.tta``)
each image is predicted at several scales, as is and mirrored, and the views merged (detector.evaluation.tta).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.config import load_config, section_from_mapping
from detector.config_schema import Config, TTAConfig
from detector.data.collate import DetectionCollator
from detector.data.image_io import ImageReadError
from detector.data.transforms import build_transforms
from detector.evaluation.inference import rescale_boxes
from detector.evaluation.tta import build_tta
from detector.predict.checkpoints import build_inference_model, load_weights, resolve_config_and_meta
from detector.predict.results import Detections
from detector.predict.streaming import (Failure, ImagePreparer, InOrder, PreparedImage, canonical_shape,
                                       shape_batches)
from detector.runtime.checkpoint import load_checkpoint

__all__ = ["Detector"]

logger = logging.getLogger("detector.predict")

_SINGLE_INPUTS = (str, Path, Image.Image, np.ndarray)


def _as_list(inputs) -> Iterable:
    """One input or many: a path, PIL image, array or 3-D tensor is one; a 4-D tensor is a batch of CHW images."""
    if isinstance(inputs, _SINGLE_INPUTS) or (isinstance(inputs, torch.Tensor) and inputs.dim() < 4):
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        return list(inputs.unbind(0))
    return inputs


class Detector:
    """A trained model with its config and class names, predicting on images of any size and kind.

    Args:
        config: the config (a YAML path or a :class:`~detector.config.Config`) the model was trained with.
        checkpoint: a focaldet checkpoint (training's ``last.pt``, a converted or published file).
        device: "cpu", "cuda", "cuda:1", a torch.device, or None for CUDA when available, else the CPU.
        overrides: ``KEY=VALUE`` config overrides (e.g. ``model.test.score_thr=0.01``), applied to the config.
    """

    def __init__(self, config: str | os.PathLike | Config | None, checkpoint: str | os.PathLike,
                 device: str | torch.device | None = None, overrides: Sequence[str] = ()):
        state = load_checkpoint(checkpoint, map_location="cpu")
        if config is not None and not isinstance(config, Config):
            config = load_config(config, overrides)
        self.config, meta = resolve_config_and_meta(checkpoint, state, config, overrides)
        self.class_names: list[str] = list(meta["class_names"])
        self.category_ids: list[int] = list(meta["category_ids"])
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_inference_model(self.config)
        load_weights(self.model, state, checkpoint, None if config is None else "the given config")
        del state
        self.model.to(self.device).eval()
        if self.config.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        data = self.config.data
        self.size_divisor = data.size_divisor
        self.preparer = ImagePreparer(build_transforms(train=False, min_size=data.test_min_size,
                                                       max_size=data.test_max_size, mean=data.mean, std=data.std))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        overrides: Sequence[str] = ()) -> "Detector":
        """The model of a checkpoint that carries its config and class names (every checkpoint focaldet writes
        since they carry metadata), with optional ``KEY=VALUE`` overrides of that config."""
        return cls(None, path, device=device, overrides=overrides)

    @property
    def score_thr(self) -> float:
        """The model's own score threshold (``model.test.score_thr``)."""
        return float(self.model.head.inference.score_thr)

    def prepare(self, source, index: int = 0, keep_original: bool = False) -> PreparedImage:
        """Read one input (path, PIL image, HWC uint8 array, CHW tensor) and apply the test resize and
        normalisation; ImageReadError names the input when it cannot be read."""
        return self.preparer(source, index, keep_original)

    def predict(self, inputs, score_thr: float | None = None, batch_size: int = 8,
                tta: TTAConfig | dict | bool | None = None) -> list[Detections]:
        """Detections for each input, in input order (a list even for one input).

        ``inputs``: one or a list (any iterable) of image paths (str / Path), PIL images, NumPy HWC uint8 RGB arrays,
        CHW tensors, uint8 or float in [0, 1] (a float tensor is used as it is, not quantised to 8 bits); a 4-D
        tensor is a batch of CHW images. Grayscale, RGBA, palette and 16-bit images are converted to RGB and the
        EXIF orientation is applied (:mod:`detector.data.image_io`). ``score_thr``: None keeps what the model keeps
        (:attr:`score_thr`); a higher value keeps only the detections scoring at least that. ``batch_size``:
        images per forward pass. ``tta``: test-time augmentation (:meth:`resolve_tta`); None follows the config's
        ``evaluation.tta`` (off unless set). Raises ImageReadError naming an input that cannot be read."""
        return list(self.predict_iter(inputs, score_thr, batch_size, tta))

    def predict_iter(self, inputs, score_thr: float | None = None, batch_size: int = 8,
                     tta: TTAConfig | dict | bool | None = None) -> Iterator[Detections]:
        """:meth:`predict` as a generator: inputs are read as they are needed and results released in input
        order, holding at most ``4 * batch_size`` prepared images, so a stream of any length runs in flat memory."""
        prepared = (self._prepare_numbered(source, index) for index, source in enumerate(_as_list(inputs)))
        for _, detections in self.stream(prepared, score_thr, batch_size, tta=tta):
            yield detections

    def resolve_tta(self, tta: TTAConfig | dict | bool | None) -> TTAConfig | None:
        """The test-time augmentation ``tta`` asks for: None the config's ``evaluation.tta`` (None: off), False
        off, True the config's or else a flip at the test size (``{flips: [false, true]}``), a mapping
        ``{scales, flips, max_size}`` (validated as ``evaluation.tta`` in a config file) or a TTAConfig."""
        if tta is None:
            return self.config.evaluation.tta
        if tta is True:
            return self.config.evaluation.tta or TTAConfig()
        if tta is False:
            return None
        if isinstance(tta, TTAConfig):
            return tta
        return section_from_mapping(TTAConfig, tta, "tta", "Detector.predict(tta=...)")

    def _prepare_numbered(self, source, index: int) -> PreparedImage:
        try:
            return self.prepare(source, index)
        except ImageReadError as err:
            raise ImageReadError(f"input {index}: {err}") from None

    def stream(self, items: Iterable[PreparedImage | Failure], score_thr: float | None = None, batch_size: int = 8,
               max_pending: int | None = None, tta: TTAConfig | dict | bool | None = None
               ) -> Iterator[tuple[PreparedImage | Failure, Detections | Failure]]:
        """``(item, detections)`` for prepared images (with ``index`` 0, 1, 2, ... in input order) in that order;
        a Failure comes back as ``(failure, failure)`` in its place. ``max_pending`` (default ``4 * batch_size``)
        bounds the images waiting for a batch of their shape; ``tta`` as in :meth:`predict`."""
        model = build_tta(self.model, self.resolve_tta(tta), self.config).eval()
        if score_thr is not None and score_thr < self.score_thr:
            logger.warning("score_thr %.3g is below the model's own threshold %.3g, which applies; load the model "
                           "with overrides=['model.test.score_thr=%g'] to keep lower scores", score_thr,
                           self.score_thr, score_thr)
        def padded_shape(item: PreparedImage | Failure) -> tuple[int, int] | None:
            return None if isinstance(item, Failure) else canonical_shape(item.img_size, self.size_divisor)

        in_order: InOrder = InOrder()
        for batch in shape_batches(items, padded_shape, batch_size, max_pending or 4 * batch_size):
            if isinstance(batch[0], Failure):
                results = [(batch[0], batch[0])]
            else:
                results = list(zip(batch, self._predict_batch(model, batch, score_thr)))
            for item, detections in results:
                yield from in_order.add(item.index, (item, detections))

    @torch.inference_mode()
    def _predict_batch(self, model: torch.nn.Module, batch: list[PreparedImage],
                       score_thr: float | None) -> list[Detections]:
        """One forward pass of ``model`` (the detector, or it wrapped in test-time augmentation) over images of one
        padded shape; detections rescaled to each input image."""
        images, _ = DetectionCollator(self.size_divisor)([(item.image, {}) for item in batch])  # (B, 3, H, W)
        if self.device.type == "cuda":
            images = images.pin_memory()
        images = images.to(self.device, non_blocking=True)
        if self.config.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = model(images, image_sizes=[item.img_size for item in batch])
        results = []
        for item, output in zip(batch, outputs):
            labels = output["labels"].cpu()
            detections = Detections(rescale_boxes(output["boxes"], item.img_size, item.orig_size).cpu(),
                                    output["scores"].float().cpu(), labels,
                                    [self.class_names[i] for i in labels.tolist()],
                                    [self.category_ids[i] for i in labels.tolist()], item.orig_size, item.source)
            results.append(detections.above(score_thr) if score_thr is not None else detections)
        return results

    def export(self, path: str | os.PathLike, format: str = "onnx", input_size: tuple[int, int] | None = None,
               dynamic: bool = False, opset: int = 17, batch_size: int = 1) -> Path:
        """Write the model with decoding and NMS inside the graph as ONNX (``format="onnx"``, needs the ``export``
        extra) or TorchScript (``"torchscript"``); returns the path written. The graph takes a normalised, padded
        batch and each image's size, and returns fixed-layout boxes, scores, labels and num_detections
        (:mod:`detector.export.graph`). ``input_size`` (H, W), multiples of ``data.size_divisor``: the traced
        (without ``dynamic``: the only) input size, by default the square that holds any image after the test
        resize; ``dynamic``: free batch, height and width axes (ONNX). The preprocessing settings and class names
        travel in the file (:func:`detector.export.exporter.export_metadata`)."""
        import copy

        from detector.export.exporter import default_input_size, export_detector, export_metadata

        data = self.config.data
        size = tuple(input_size) if input_size is not None else default_input_size(data.test_max_size,
                                                                                   data.size_divisor)
        metadata = export_metadata(self.class_names, self.category_ids, list(data.mean), list(data.std),
                                   data.test_min_size, data.test_max_size, data.size_divisor, self.config.model.type)
        model = copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)  # exported on the CPU
        return export_detector(model, path, format, size, metadata, size_divisor=data.size_divisor, dynamic=dynamic,
                               batch_size=batch_size, opset=opset)

    def __repr__(self) -> str:
        return (f"Detector({self.config.model.type}, {len(self.class_names)} classes, device={self.device}, "
                f"test size {self.config.data.test_min_size}/{self.config.data.test_max_size})")
