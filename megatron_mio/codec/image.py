"""The image codec interface: images <-> 32 codes from an 8,192-entry codebook.

MIO tokenizes images with SEED-Tokenizer-2, which is not packaged; a user wraps their copy in a
class with the two methods of ``ImageCodec`` and names it ``module:Class``
(``load_image_codec("my_seed:SeedCodec", model_dir="...")``).  Images are uint8 arrays
``[height, width, 3]`` (RGB) so that no image library is imposed; ``ImageCodecAdapter`` checks
what the wrapper returns, so a wrong wrapper fails on its first image with one line rather than
later in preprocessing.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np

from megatron_mio.tokenizer import vocab as V


class ImageCodecError(ValueError):
    """A codec that cannot be loaded or that broke the interface (one line)."""


@runtime_checkable
class ImageCodec(Protocol):
    """What a user's image codec provides."""

    def encode(self, images: list[np.ndarray]) -> list[list[int]]:
        """RGB uint8 ``[H, W, 3]`` images -> 32 codes in 0..8191 each."""

    def decode(self, codes: list[list[int]]) -> list[np.ndarray]:
        """32 codes per image -> RGB uint8 ``[H, W, 3]`` images."""


class ImageCodecAdapter:
    """A user's codec behind checks of the interface's shapes, ranges and types."""

    def __init__(self, codec: ImageCodec, name: str):
        self.codec, self.name = codec, name

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """-> int64 ``[len(images), 32]``."""
        for i, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ImageCodecError(f"image {i}: expected uint8 [height, width, 3], got "
                                      f"{image.dtype} {list(image.shape)}")
        codes = np.asarray(self.codec.encode(images))
        expected = (len(images), V.IMAGE_CODES_PER_IMAGE)
        if codes.shape != expected or codes.dtype.kind not in "iu":
            raise ImageCodecError(f"{self.name}.encode returned {codes.dtype} "
                                  f"{list(codes.shape)}, expected integers {list(expected)}")
        if codes.min() < 0 or codes.max() >= V.IMAGE_CODEBOOK_SIZE:
            raise ImageCodecError(f"{self.name}.encode returned codes outside "
                                  f"0..{V.IMAGE_CODEBOOK_SIZE - 1}")
        return codes.astype(np.int64)

    def decode(self, codes) -> list[np.ndarray]:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != V.IMAGE_CODES_PER_IMAGE:
            raise ImageCodecError(f"decode needs [images, {V.IMAGE_CODES_PER_IMAGE}] codes, got "
                                  f"{list(codes.shape)}")
        images = self.codec.decode(codes.tolist())
        if len(images) != len(codes):
            raise ImageCodecError(f"{self.name}.decode returned {len(images)} images for "
                                  f"{len(codes)} code lists")
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
                raise ImageCodecError(f"{self.name}.decode image {i}: expected a uint8 "
                                      f"[height, width, 3] array")
        return images


def load_image_codec(spec: str, **kwargs) -> ImageCodecAdapter:
    """``module:Class`` (importable, e.g. on PYTHONPATH) constructed with ``kwargs``."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ImageCodecError(f"image codec {spec!r}: expected module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImageCodecError(f"image codec {spec!r}: cannot import {module_name} ({error}); "
                              f"is it on PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImageCodecError(f"image codec {spec!r}: {module_name} has no {class_name}")
    codec = cls(**kwargs)
    if not isinstance(codec, ImageCodec):
        raise ImageCodecError(f"image codec {spec!r}: {class_name} needs encode(images) and "
                              f"decode(codes) methods")
    return ImageCodecAdapter(codec, class_name)
