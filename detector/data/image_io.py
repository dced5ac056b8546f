"""Reading images of any common kind into RGB tensors: files, PIL images, NumPy arrays, tensors.

Files are decoded with ``torchvision.io.decode_image`` (JPEG, PNG, WebP, GIF, ...; the fastest decoder here and the
one the datasets use), with PIL as the fallback for what it does not read (BMP, TIFF, ...). Whatever the source:

* grayscale, palette and CMYK images become RGB; an alpha channel is dropped (the pixels under it are kept, as
  ``decode_image(mode=RGB)`` does for the datasets);
* 16-bit images are scaled to 8 bits (``v >> 8``, torchvision's ``to_dtype(scale=True)``);
* the EXIF orientation tag is applied (``exif_orientation=True``), so the image is upright as viewers show it.
  A PIL image that still carries the tag (``Image.open`` does not apply it) is turned the same way.

:func:`decode_image_file` is the file reader (the datasets can use it); :func:`read_image` takes any source.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "decode_image_file", "exif_orientation_tag", "read_image",
           "describe_source"]

# Extensions a folder search picks up (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# torchvision's decoders prefix their messages with "function, /path/to/file.cpp:123, ".
_CPP_LOCATION = re.compile(r"^[\w:() ]*, \S+\.(?:cpp|h|c):\d+, ")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112  # the EXIF tag holding the orientation


class ImageReadError(ValueError):
    """An image cannot be read or is not an image of a supported kind; the message names the source."""


def _to_rgb_uint8(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 / uint16 with C in 1, 2, 3, 4 -> (3, H, W) uint8 (gray repeated, alpha dropped); 16 bits
    are scaled as torchvision's to_dtype(scale=True) does (v >> 8)."""
    if image.dtype == torch.uint16:
        image = F.to_dtype(image, torch.uint8, scale=True)
    channels = image.shape[0]
    if channels in (1, 2):  # gray, gray + alpha
        return image[:1].expand(3, -1, -1).contiguous()
    return image[:3].contiguous()


def _pil_to_tensor(image: Image.Image, exif_orientation: bool) -> torch.Tensor:
    """A PIL image as uint8 RGB (3, H, W)."""
    if exif_orientation:
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit gray (PNG), possibly held as 32-bit integers ("I")
        values = np.asarray(image, dtype=np.int64).clip(0, 65535).astype(np.uint16)  # (H, W)
        return _to_rgb_uint8(torch.from_numpy(values)[None])
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, YCbCr, ...
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def decode_image_file(path: str | os.PathLike, exif_orientation: bool = True, name: str | None = None) -> torch.Tensor:
    """Decode an image file as uint8 RGB (3, H, W); ImageReadError names the file (as ``name``, default the path)
    when it cannot."""
    path = os.fspath(path)
    name = path if name is None else name
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        try:
            data = read_file(path)
        except (RuntimeError, OSError) as err:
            verb = "decode" if os.path.isfile(path) else "read"  # an empty file is there but holds no image
            raise ImageReadError(f"cannot {verb} image {name}: {_CPP_LOCATION.sub('', str(err))}") from err
        try:
            return _to_rgb_uint8(decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=exif_orientation))
        except (RuntimeError, ValueError) as err:  # a format torchvision does not decode, or a broken file
            torchvision_error = _CPP_LOCATION.sub("", str(err))
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_tensor(image, exif_orientation)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"cannot decode image {name}: {torchvision_error}; PIL: {err}") from err


def exif_orientation_tag(path: str | os.PathLike) -> int | None:
    """The EXIF orientation (1-8) a file declares, or None when it has none (or cannot be read by PIL).

    1 is upright; 6 and 8 store the picture turned by 90 degrees, so the pixel grid is W x H of what viewers show."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(_EXIF_ORIENTATION)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """NumPy HWC (or HW) uint8 / uint16 -> uint8 RGB (3, H, W)."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"a NumPy image must be uint8 (or uint16), got {array.dtype}; for floats in [0, 1] "
                             "pass torch.from_numpy(array).permute(2, 0, 1)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"a NumPy image must be (H, W, 3) RGB (or (H, W), (H, W, 1) gray, (H, W, 4) RGBA), got "
                             f"shape {array.shape}")
    array = np.ascontiguousarray(array) if array.flags.writeable else array.copy()  # torch wants writable memory
    return _to_rgb_uint8(torch.from_numpy(array).permute(2, 0, 1))


def _tensor_to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """CHW (or HW) uint8 / uint16 -> uint8 RGB (3, H, W); float in [0, 1] -> float32 RGB (3, H, W)."""
    tensor = tensor.detach().cpu()
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 2, 3, 4):
        raise ImageReadError(f"an image tensor must be (3, H, W) (or (1, H, W) gray, (4, H, W) RGBA), got shape "
                             f"{tuple(tensor.shape)}; an (H, W, 3) tensor needs .permute(2, 0, 1)")
    if tensor.dtype in (torch.uint8, torch.uint16):
        return _to_rgb_uint8(tensor)
    if not tensor.is_floating_point():
        raise ImageReadError(f"an image tensor must be uint8 or float in [0, 1], got {tensor.dtype}")
    tensor = tensor.float()
    low, high = float(tensor.min()), float(tensor.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
        raise ImageReadError(f"a float image tensor must hold values in [0, 1], got [{low:g}, {high:g}] (uint8 "
                             "values as floats? divide by 255)")
    channels = tensor.shape[0]
    return tensor[:1].expand(3, -1, -1).contiguous() if channels in (1, 2) else tensor[:3].contiguous()


def read_image(source, exif_orientation: bool = True) -> torch.Tensor:
    """Any supported image as RGB (3, H, W): uint8, or float32 in [0, 1] for a float tensor (kept unquantised).

    ``source``: a path (str or Path), a PIL image, a NumPy (H, W, 3) uint8 RGB array (also (H, W) gray, (H, W, 4)
    RGBA, uint16), or a (3, H, W) tensor, uint8 or float in [0, 1] (also 1 or 4 channels, uint16).
    Raises ImageReadError naming the problem (and the file)."""
    if isinstance(source, (str, Path)):
        image = decode_image_file(source, exif_orientation)
    elif isinstance(source, Image.Image):
        image = _pil_to_tensor(source, exif_orientation)
    elif isinstance(source, np.ndarray):
        image = _array_to_tensor(source)
    elif isinstance(source, torch.Tensor):
        image = _tensor_to_rgb(source)
    else:
        raise ImageReadError(f"cannot read an image from a {type(source).__name__}: give a path, a PIL image, a "
                             "NumPy HWC uint8 array or a CHW tensor")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ImageReadError(f"{describe_source(source)}: the image is empty ({image.shape[1]} x {image.shape[2]})")
    return image


def describe_source(source) -> str:
    """A short name for an input in messages: the path, or the kind and shape of an in-memory image."""
    if isinstance(source, (str, Path)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"PIL image {source.mode} {source.size[0]}x{source.size[1]}"
    shape = getattr(source, "shape", None)
    return f"{type(source).__name__} of shape {tuple(shape)}" if shape is not None else type(source).__name__
