"""Reading image files into numpy arrays (Pillow), as HALCON's ``read_image`` does for the
dataset procedures.

:func:`read_image` returns ``(H, W)`` for gray and ``(H, W, 3)`` for color images, in the
file's own sample type:

* 8-bit gray (``'L'``) → uint8 ``(H, W)``; 1-bit (``'1'``) → uint8 0 / 255 (HALCON reads a
  binary image as a byte image);
* 16-bit gray (Pillow's ``'I;16'``, ``'I;16L'``, ``'I;16B'``) → uint16 ``(H, W)``; 32-bit
  integer (``'I'``) → uint16 when every value lies in 0 … 65535 (Pillow opens some 16-bit
  files as ``'I'``), else int32; float (``'F'``) → float32;
* ``'RGB'`` → uint8 ``(H, W, 3)``; ``'RGBA'`` → RGB (alpha dropped); ``'LA'`` → gray (alpha
  dropped); ``'CMYK'``, ``'YCbCr'``, ``'LAB'``, ``'HSV'`` → RGB;
* palette images (``'P'``, ``'PA'``) → RGB by default; ``palette='index'`` keeps the palette
  indices as a uint8 ``(H, W)`` image (label images of segmentation datasets are often saved
  as palette PNGs whose indices are the class ids).

A missing file raises HOperatorError 5200 (H_ERR_FNF), a file Pillow cannot decode
(unknown format, truncated, corrupt) 7780 (H_ERR_DL_FILE_READ); both messages name the file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import H_ERR_DL_FILE_READ, H_ERR_FNF, HOperatorError

__all__ = ["IMAGE_EXTENSIONS", "read_image", "is_image_file"]

#: File extensions the dataset procedures list as images (lower case, with the dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".pgm",
                    ".ppm", ".pbm", ".pnm", ".gif", ".webp", ".jp2")

_TO_RGB = {"RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"}


def is_image_file(name: str) -> bool:
    """Whether ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str, palette: str = "rgb", hint: str = "") -> np.ndarray:
    """The image in file ``path`` as a numpy array (see the module docstring).

    ``hint`` is appended to the message of a missing-file error (e.g. which GenParam redirects
    the folder)."""
    from PIL import Image, UnidentifiedImageError  # Pillow is a dependency of the workflow

    p = os.fspath(path)
    if not os.path.isfile(p):
        what = "is a folder, not an image file" if os.path.isdir(p) else "not found"
        raise HOperatorError(H_ERR_FNF, f"image file '{p}' {what}{hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's DecompressionBombWarning
            with Image.open(p) as im:
                im.load()
                mode = im.mode
                if mode in ("P", "PA") and palette == "index":
                    arr = np.array(im.convert("P") if mode == "PA" else im, dtype=np.uint8)
                elif mode in _TO_RGB:
                    arr = np.array(im.convert("RGB"))
                elif mode == "LA":
                    arr = np.array(im.convert("L"))
                elif mode == "1":
                    arr = np.array(im, dtype=np.uint8) * np.uint8(255)
                elif mode.startswith("I;16"):
                    arr = np.array(im).astype(np.uint16, copy=False)
                elif mode == "I":
                    arr = np.array(im)
                    if arr.size and arr.min() >= 0 and arr.max() <= 65535:
                        arr = arr.astype(np.uint16)
                    else:
                        arr = arr.astype(np.int32, copy=False)
                elif mode == "F":
                    arr = np.array(im, dtype=np.float32)
                elif mode in ("L", "RGB"):
                    arr = np.array(im)
                else:  # any other Pillow mode: let Pillow convert to RGB
                    arr = np.array(im.convert("RGB"))
    except HOperatorError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError,
            EOFError, MemoryError, Image.DecompressionBombError) as err:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read image file '{p}': {type(err).__name__}: {err}") from None
    if arr.ndim == 3 and arr.shape[2] == 4:  # defensive: never hand out an alpha channel
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"image file '{p}' holds no 2-D image (shape {arr.shape})")
    return np.ascontiguousarray(arr)
