"""The image codec interface through a small stand-in loaded by ``module:Class``, as a user's
SEED-Tokenizer-2 wrapper would be: 32 codes of 8,192 per image, codes back to an image, and one
clear line for a codec that breaks the interface or cannot be loaded."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_mio.codec.image import ImageCodecError, load_image_codec


class PatchColorCodec:
    """Stand-in: an image's 4 x 8 grid of patch colours, each quantized to 13 bits (4 red, 4
    green, 5 blue) = one code of 8,192; decoding paints the patches back."""

    def __init__(self, patch: int = 4):
        self.patch = patch

    def encode(self, images):
        codes = []
        for image in images:
            h, w, _ = image.shape
            grid = image[: h - h % 4, : w - w % 8].reshape(4, h // 4, 8, w // 8, 3).mean((1, 3))
            r, g, b = (grid[..., 0] // 16).astype(int), (grid[..., 1] // 16).astype(int), \
                (grid[..., 2] // 8).astype(int)
            codes.append(((r << 9) | (g << 5) | b).ravel().tolist())
        return codes

    def decode(self, codes):
        images = []
        for row in codes:
            c = np.asarray(row).reshape(4, 8)
            rgb = np.stack([(c >> 9) * 16 + 8, ((c >> 5) & 15) * 16 + 8, (c & 31) * 8 + 4], -1)
            images.append(np.kron(rgb, np.ones((self.patch, self.patch, 1))).astype(np.uint8))
        return images


class WrongLengthCodec(PatchColorCodec):
    def encode(self, images):
        return [codes[:31] for codes in super().encode(images)]


def test_stand_in_round_trip_through_module_class():
    codec = load_image_codec(f"{__name__}:PatchColorCodec", patch=2)
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(2, 4, 8, 3))
    images = [np.kron(c, np.ones((6, 6, 1))).astype(np.uint8) for c in colors]  # 24 x 48
    codes = codec.encode(images)
    assert codes.shape == (2, 32) and codes.dtype == np.int64
    assert 0 <= codes.min() and codes.max() < 8192
    decoded = codec.decode(codes)
    assert [d.shape for d in decoded] == [(8, 16, 3)] * 2  # the stand-in's patch size
    for color, image in zip(colors, decoded):
        assert np.abs(image[::2, ::2].astype(int) - color).max() <= 8  # 4-5 bits per channel


def test_interface_violations_are_one_line():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ImageCodecError, match=r"WrongLengthCodec.encode returned int\w* \[1, 31\]"):
        load_image_codec(f"{__name__}:WrongLengthCodec").encode([image])
    with pytest.raises(ImageCodecError, match=r"image 0: expected uint8 \[height, width, 3\]"):
        load_image_codec(f"{__name__}:PatchColorCodec").encode([image[..., 0]])
    with pytest.raises(ImageCodecError, match="cannot import no_such_module"):
        load_image_codec("no_such_module:Codec")
    with pytest.raises(ImageCodecError, match="has no Missing"):
        load_image_codec(f"{__name__}:Missing")
    with pytest.raises(ImageCodecError, match="expected module:Class"):
        load_image_codec("PatchColorCodec")
    with pytest.raises(ImageCodecError, match="needs encode"):
        load_image_codec("numpy:ndarray", shape=(1,))
