"""Reading and writing images as RGB numpy arrays.

OpenCV (opencv-python-headless) decodes: it keeps 16-bit RGB (Pillow truncates it to 8 bits) and
decodes PNG/JPEG faster than Pillow (numbers in `bench/loader.py`). Every image comes out HWC RGB:
grayscale is repeated to three channels, alpha is dropped, CMYK JPEGs are converted by the decoder.
EXIF orientation is ignored on purpose: HR and LR files are paired pixel array to pixel array, and a
tool that wrote one of them may have dropped the tag the other still carries.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from zerosr.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
_SUPPORTED = "PNG, JPEG, WebP, BMP or TIFF"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_image_raw(path: str | Path) -> np.ndarray:
    """Decode `path` to an HWC RGB array in its stored depth: uint8, uint16 or float32."""
    path = Path(path)
    try:
        # fromfile + imdecode instead of imread: imread cannot open non-ASCII paths on Windows.
        encoded = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image '{path}' does not exist: check the data paths in your config") from None
    except OSError as err:
        raise UserError(f"cannot open image '{path}' ({err.strerror}): check the file's permissions") from None
    image = _decode(encoded)
    if image is None:
        raise UserError(
            f"cannot decode image '{path}': it is empty, truncated or not a {_SUPPORTED} file; "
            "re-export it or remove it from the folder"
        )
    return _to_rgb(image, path)


def _decode(encoded: np.ndarray) -> np.ndarray | None:
    if encoded.size == 0:
        return None
    # A corrupt file is reported as our UserError; OpenCV's own log lines would only add noise.
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(encoded, _DECODE_FLAGS)
    except cv2.error:
        return None
    finally:
        cv2.utils.logging.setLogLevel(previous)


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise UserError(
            f"image '{path}' has pixel type {image.dtype}; save it as an 8- or 16-bit {_SUPPORTED} file"
        )
    # cvtColor rather than a numpy channel flip: the strided numpy copy costs ~20x more.
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:  # ANYCOLOR can still hand back BGRA for some TIFFs
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_float32(image: np.ndarray) -> np.ndarray:
    """Scale an integer image to float32 in [0, 1] (float input is clipped to that range)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image as float32 HWC RGB in [0, 1]."""
    return to_float32(read_image_raw(path))


def quantize(image: np.ndarray, dtype: type = np.uint8) -> np.ndarray:
    """Round a float image in [0, 1] to uint8 or uint16."""
    peak = 255.0 if dtype == np.uint8 else 65535.0
    return np.round(np.clip(image, 0.0, 1.0) * peak).astype(dtype)


def encode_image(image: np.ndarray, extension: str = ".png") -> bytes:
    """Encode an HWC RGB (or HW gray) array; float is taken as [0, 1] and stored as 8 bits."""
    if image.dtype not in (np.uint8, np.uint16):
        image = quantize(image, np.uint8)
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ValueError(f"expected 1 or 3 channels, got shape {image.shape}")
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(extension.lower(), np.ascontiguousarray(image))
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(
            f"cannot save a {image.dtype} image as '{extension}': use .png (any depth) "
            f"or one of {', '.join(IMAGE_EXTENSIONS)} for 8-bit images"
        )
    return encoded.tobytes()


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image file; the format follows the extension (see `encode_image`)."""
    path = Path(path)
    data = encode_image(image, path.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
