"""Image objects: what HALCON calls iconic objects, as numpy arrays.

An image object parameter (``batch_images`` of train_dl_classifier_batch, ``images`` of
apply_dl_classifier, ``object`` of set_dict_object) takes

* one numpy array: an image ``(H, W)`` or ``(H, W, C)`` with C = 1 or 3; a 3-D array whose
  last axis is neither 1 nor 3 is a batch of gray images ``(N, H, W)``; a 4-D array is a batch
  ``(N, H, W, C)``;
* a list (or tuple) of 2-D / 3-D arrays, one per image;
* an :class:`HObject`, the small view below.

:class:`HObject` holds a list of images and reads like HALCON's object tuples:
``len(obj)`` is ``count_obj(obj)``, ``select_obj(obj, 1)`` the first image (1-based, as in
HALCON), ``concat_obj(a, b)`` appends, ``gen_empty_obj()`` is empty.  ``obj[i]`` (0-based)
and iteration give the numpy arrays.  Nothing here copies pixel data.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .operators._tuple import is_int, operator, to_tuple, wrong_type, wrong_value

__all__ = ["HObject", "image_list", "count_obj", "select_obj", "concat_obj", "gen_empty_obj"]


def _one_image(a: Any) -> bool:
    return isinstance(a, np.ndarray) and (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3)))


def image_list(obj: Any, pos: int) -> list:
    """The images of an image object, as a list of numpy arrays (views, no copies).
    Anything that is not an image object → 1200+pos."""
    if isinstance(obj, HObject):
        return list(obj.images)
    if isinstance(obj, np.ndarray):
        if _one_image(obj):
            return [obj]
        if obj.ndim in (3, 4):
            return list(obj)
        raise wrong_type(pos, f"an image object is an (H, W[, C]) image or an (N, H, W[, C]) "
                              f"batch, got an array of shape {obj.shape}")
    if isinstance(obj, (list, tuple)):
        out: list = []
        for x in obj:
            if isinstance(x, HObject):
                out.extend(x.images)
            elif isinstance(x, np.ndarray) and x.ndim in (2, 3):
                out.append(x)
            else:
                raise wrong_type(pos, f"an image object list holds (H, W[, C]) numpy arrays, "
                                      f"got {type(x).__name__}"
                                      f"{' of shape ' + str(x.shape) if hasattr(x, 'shape') else ''}")
        return out
    raise wrong_type(pos, f"expected an image object (numpy array, list of arrays or HObject), "
                          f"got {type(obj).__name__}")


class HObject:
    """A tuple of images (numpy arrays).  ``HObject(x)`` takes any image object (see the module
    docstring); ``HObject()`` is empty."""

    __slots__ = ("images",)

    def __init__(self, images: Any = None) -> None:
        self.images: list = [] if images is None else image_list(images, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.images)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return HObject(self.images[i])
        return self.images[i]

    def __array__(self, dtype=None, copy=None):
        """The images stacked to an (N, H, W[, C]) array (they must have one shape); an
        object of exactly one image is that image's (H, W[, C]) array, so a one-image object
        (e.g. from himage_from_numpy_array) works wherever an image array is expected, such
        as a DLSample's 'image'."""
        if len(self.images) == 1:
            a = np.asarray(self.images[0])
            return a if dtype is None else a.astype(dtype)
        a = np.stack(self.images) if self.images else np.zeros((0, 0, 0), np.float32)
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        shapes = sorted({tuple(im.shape) for im in self.images})
        return f"<HObject {len(self.images)} image(s) {shapes}>"


@operator
def gen_empty_obj() -> HObject:
    """An empty object tuple."""
    return HObject()


@operator
def count_obj(objects: Any) -> int:
    """Number of images in ``objects``."""
    return len(image_list(objects, 1))


@operator
def select_obj(objects: Any, index: Any) -> HObject:
    """The images at the 1-based ``index`` (one index or a list) as an HObject."""
    images = image_list(objects, 1)
    out = []
    for i in to_tuple(index):
        if not is_int(i):
            raise wrong_type(2, f"index must be an integer, got {i!r}")
        if not 1 <= int(i) <= len(images):
            raise wrong_value(2, f"index {i} outside 1 … {len(images)}")
        out.append(images[int(i) - 1])
    return HObject(out)


@operator
def concat_obj(objects1: Any, objects2: Any) -> HObject:
    """The images of ``objects1`` followed by those of ``objects2``."""
    return HObject(image_list(objects1, 1) + image_list(objects2, 2))
