"""Reading one image and one mask from disk: the only two functions of the segmentation data that
touch image files.

Images go through `read_image`, which is the image folders' one decode function
(isda_exp.data.folder.decode: TorchCodec, Pillow for BMP/TIFF; RGB uint8 with the EXIF orientation
applied, so a mask must be drawn on the upright image). Masks are read with Pillow (`np.array(Image.open(path))`), which gives the stored
values of a palette ('P') or grey ('L') PNG exactly: the palette index, never a colour.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import UserError
from ..folder.decode import decode_file


def read_image(path: str) -> torch.Tensor:
    """uint8 [3, H, W] RGB of an image file (decode.Undecodable, a ValueError, when it does not
    decode; OSError when it cannot be read)."""
    return decode_file(path)


def read_mask(path: str) -> np.ndarray:
    """The stored values of a class-index PNG as an [H, W] array (palette indices for mode P)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            raise UserError(f"mask {path} is a {img.mode} image: masks must be class-index PNGs "
                            "(mode L or P, one class index per pixel), not colour pictures")
        return np.array(img)


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header (nothing decoded), None if Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # unreadable: found when the file is read, and replaced then
        return None
