"""Reading one image and one mask from disk: the only two functions of the segmentation data that
touch image files.

Images go through `read_image` alone (torchvision.io today), so the decoder can be switched in
one place. Masks are read with Pillow (`np.array(Image.open(path))`), which gives the stored
values of a palette ('P') or grey ('L') PNG exactly: the palette index, never a colour.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ...errors import UserError

# torchvision 0.29 deprecates its image I/O in favour of TorchCodec and warns on every call
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)


def read_image(path: str) -> torch.Tensor:
    """uint8 [3, H, W] RGB of a JPEG or PNG file (raises on a file that does not decode)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(path), mode=ImageReadMode.RGB)


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
