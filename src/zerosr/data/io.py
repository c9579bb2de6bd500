"""Reading and writing images as RGB numpy arrays.

OpenCV (opencv-python-headless) decodes: it keeps 16-bit RGB (Pillow truncates it to 8 bits) and
decodes PNG/JPEG faster than Pillow (numbers in `bench/loader.py`). Training reads HWC RGB:
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
    return _to_rgb(_read(path, _DECODE_FLAGS), path)


def read_image_unchanged(path: str | Path) -> np.ndarray:
    """Decode `path` as stored, in RGB order: HW (gray), HWC RGB or RGBA; uint8, uint16 or float32.

    For `zerosr.upscale`, which keeps grayscale, alpha and bit depth: the training loader uses
    `read_image_raw`, which always gives RGB.
    """
    path = Path(path)
    image = _read(path, cv2.IMREAD_UNCHANGED)  # keeps alpha and depth, ignores EXIF orientation
    _check_depth(image, path)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(image, code)
    return image


def _read(path: Path, flags: int) -> np.ndarray:
    try:
        # fromfile + imdecode instead of imread: imread cannot open non-ASCII paths on Windows.
        encoded = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image '{path}' does not exist: check the data paths in your config") from None
    except OSError as err:
        raise UserError(f"cannot open image '{path}' ({err.strerror}): check the file's permissions") from None
    image = _decode(encoded, flags)
    if image is None:
        raise UserError(
            f"cannot decode image '{path}': it is empty, truncated or not a {_SUPPORTED} file; "
            "re-export it or remove it from the folder"
        )
    return image


def _decode(encoded: np.ndarray, flags: int) -> np.ndarray | None:
    if encoded.size == 0:
        return None
    # A corrupt file is reported as our UserError; OpenCV's own log lines would only add noise.
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(encoded, flags)
    except cv2.error:
        return None
    finally:
        cv2.utils.logging.setLogLevel(previous)


def _check_depth(image: np.ndarray, path: Path) -> None:
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise UserError(
            f"image '{path}' has pixel type {image.dtype}; save it as an 8- or 16-bit {_SUPPORTED} file"
        )


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    _check_depth(image, path)
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


# Formats that hold 8 bits per channel only, and those without an alpha channel.
EIGHT_BIT_EXTENSIONS = (".jpg", ".jpeg", ".webp", ".bmp")
NO_ALPHA_EXTENSIONS = (".jpg", ".jpeg")


def encode_image(image: np.ndarray, extension: str = ".png", quality: int | None = None) -> bytes:
    """Encode an HW gray, HWC RGB or RGBA array; float is taken as [0, 1] and stored as 8 bits.

    16-bit images keep 16 bits in PNG and TIFF and are rounded to 8 bits for formats that hold
    only 8 (OpenCV itself would clip them to white). `quality` (1-100) sets JPEG and WebP quality.
    """
    extension = extension.lower()
    if image.dtype not in (np.uint8, np.uint16):
        image = quantize(image, np.uint8)
    if image.dtype == np.uint16 and extension in EIGHT_BIT_EXTENSIONS:
        image = np.round(image / 257.0).astype(np.uint8)
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise ValueError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
        if image.shape[2] == 4 and extension in NO_ALPHA_EXTENSIONS:
            raise UserError("JPEG cannot store the alpha channel of this image: save it as .png or .webp")
        code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    params: list[int] = []
    if quality is not None and extension in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif quality is not None and extension == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    try:
        ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image), params)
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
