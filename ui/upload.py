"""An image a visitor uploads, read defensively: PNG or JPEG, bounded, whole, plain pixels.

Every refusal is an `UploadError` whose message says what was wrong and what to upload
instead; nothing from the decoder (paths, tracebacks) reaches the visitor.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from tda.data import pil_to_array
from tda.limits import Limits

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG")
# 8-bit grey or colour, with or without alpha or a palette; not 16-bit, float, CMYK, ...
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


class UploadError(ValueError):
    """An upload that cannot be used; the message is meant for the visitor."""


def read_image(data: bytes, name: str, size: int, channels: int, limits: Limits) -> np.ndarray:
    """The uploaded file's first frame as [channels, size, size] uint8, like the training set."""
    name = _plain(name)
    if len(data) > limits.upload_mb * 2**20:
        raise UploadError(
            f"{name} is {len(data) / 2**20:.1f} MB; the limit is {limits.upload_mb} MB."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                _check_header(im, name, limits)
                im.load()  # decode now: a truncated or corrupt file fails here
                return pil_to_array(im, size, channels)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(_too_many(name, limits)) from e
    except UnidentifiedImageError as e:
        raise UploadError(
            f"Could not read {name}: it is not a valid PNG or JPEG image. "
            "Upload a .png, .jpg or .jpeg file."
        ) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # the decoder's ways to fail
        log.info("upload %r refused: %s", name, e)
        truncated = "truncated" in str(e) or isinstance(e, EOFError)
        raise UploadError(
            f"Could not read {name}: the file is "
            + ("truncated (cut short)." if truncated else "damaged.")
            + " Upload the whole image again, or another one."
        ) from e


def _plain(name: str) -> str:
    """A visitor's file name as plain text for a message: no markup, at most 60 characters."""
    safe = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in str(name))
    return safe[:60].strip() or "the file"


def _check_header(im: Image.Image, name: str, limits: Limits) -> None:
    """Refuse before decoding: too many pixels (a decompression bomb) or an odd mode."""
    w, h = im.size
    if w * h > limits.upload_pixels:
        raise UploadError(_too_many(name, limits, f" ({w}×{h})"))
    if im.mode not in MODES:
        raise UploadError(
            f"{name} has pixel mode {im.mode}, which this app does not read. Upload an 8-bit "
            "greyscale or RGB image (PNG or JPEG)."
        )


def _too_many(name: str, limits: Limits, size: str = "") -> str:
    return (
        f"{name} has more pixels{size} than this app opens: the limit is "
        f"{limits.upload_pixels:,} pixels (a small file with that many is a decompression "
        "bomb). Upload a smaller image."
    )
