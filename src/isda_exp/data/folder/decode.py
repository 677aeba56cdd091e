"""The decoding of one image file: the one function every reader of images calls (the folder
streams in DataLoader workers, decode=device's fallback, explain's tiles).

TorchCodec decodes JPEG, PNG, WebP and GIF (the formats torchvision.io decoded; torchvision 0.29
deprecates its image I/O in favour of TorchCodec). What it does not recognise (BMP, TIFF, PPM/PGM)
goes through Pillow. Whatever the file holds, the result is uint8 [3, H, W] RGB: grayscale, CMYK,
palette and alpha are converted (alpha dropped), 16-bit PNGs scaled to 8 bits (round(v / 257)),
the first frame of an animated GIF/WebP taken, and the EXIF orientation applied (TorchCodec always
applies it; the Pillow path does the same). A file that cannot be decoded raises `Undecodable`
with a short reason (no C++ source path), which the caller logs and counts.

`decode_jpegs` is the batched form for decode=device: TorchCodec's decode_jpeg over a list, on a
CUDA device with nvJPEG; on the CPU it is the same libjpeg-turbo decode as `decode_file`'s, so the
two paths give the same pixels.
"""
from __future__ import annotations

import io
import os
import re

import numpy as np
import torch
from torchcodec.decoders import decode_image, decode_jpeg

# listed by the folder source; any case (ImageNet's files end in .JPEG)
NATIVE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PILLOW_EXTENSIONS = (".bmp", ".tif", ".tiff", ".ppm", ".pgm")
EXTENSIONS = NATIVE_EXTENSIONS + PILLOW_EXTENSIONS
JPEG_MAGIC = b"\xff\xd8\xff"
_CPP_PREFIX = re.compile(r"^\w+, \S+:\d+, ")  # "decode_rows, /__w/.../DecodeJpeg.cpp:287, "


class Undecodable(ValueError):
    """A file that holds no image this module can decode; the message is the short reason."""


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (OSError when it cannot be read)."""
    with open(path, "rb") as f:
        data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.empty(0, dtype=torch.uint8)


def decode_file(source: str | os.PathLike | bytes | torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] RGB from a path, bytes or a 1-D uint8 tensor of a file's bytes."""
    if isinstance(source, (str, os.PathLike)):
        data = read_bytes(os.fspath(source))
    elif isinstance(source, (bytes, bytearray)):
        data = torch.frombuffer(bytearray(source), dtype=torch.uint8) if source else \
            torch.empty(0, dtype=torch.uint8)
    else:
        data = source
    if len(data) == 0:
        raise Undecodable("empty file")
    try:
        img = decode_image(data, mode="RGB")
    except ValueError:  # a format TorchCodec does not recognise: BMP, TIFF, ... or no image
        img = _pillow(data)
    except RuntimeError as e:  # truncated, corrupt
        raise Undecodable(short_reason(e)) from None
    return _rgb8(img)


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] per JPEG on `device`, decoded in one call (nvJPEG on CUDA). Raises
    RuntimeError/ValueError when any of them cannot be decoded (the caller retries one by one)."""
    return [_rgb8(img) for img in decode_jpeg(list(datas), mode="RGB", device=device)]


def decode_jpeg_on(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    return _rgb8(decode_jpeg(data, mode="RGB", device=device))


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


def short_reason(error: BaseException) -> str:
    """The first line of a decoder's message without its C++ source location, at most 120 chars."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return _CPP_PREFIX.sub("", text)[:120]


def _rgb8(img: torch.Tensor) -> torch.Tensor:
    if img.dim() == 4:  # an animated GIF or WebP: its first frame
        img = img[0]
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
        raise Undecodable(f"decoded to {img.dtype} {tuple(img.shape)}, not 8-bit RGB")
    return img.contiguous()


def _pillow(data: torch.Tensor) -> torch.Tensor:
    """BMP, TIFF, PPM/PGM through Pillow: EXIF orientation applied, 16-bit scaled as TorchCodec
    scales PNGs, then RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):
                values = np.asarray(im, dtype=np.float32) / 257.0
                im = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
            rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise Undecodable("not an image file (no JPEG, PNG, WebP, GIF, BMP or TIFF data)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt BMP/TIFF
        raise Undecodable(short_reason(e)) from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
