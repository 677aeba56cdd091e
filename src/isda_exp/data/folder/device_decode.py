"""dataset.decode=device: image-folder batches decoded and transformed on the training device.

DataLoader workers only read each file's bytes; the main process decodes a whole batch's JPEGs in
one TorchCodec decode_jpeg call on the run's device (decode.decode_jpegs: batched nvJPEG on a CUDA
GPU; libjpeg-turbo, the workers' decoder, on the CPU), then applies each item's own transform there
(FolderImages.transformed: the crop and flip keyed by (seed, epoch, index), or the centre crop).
Orders, keys and augmentation draws are those of decode=workers, so resume mid-epoch, the ranks'
shares and any worker count behave alike; on the CPU the batches are bit for bit the same.

What decode_jpeg cannot take (a PNG, WebP, BMP, a file that fails to read or to decode) goes
through the workers' own path on the CPU (FolderImages._read_from: decode.decode_file, or the next
readable image, logged once per path and counted in bad_images), then moves to the device. A CUDA
device on which TorchCodec cannot decode JPEG is found by decoding a tiny JPEG once: one warning, then
decoding on the CPU (the transforms stay on the device).

The bytes are not pinned: decode_jpeg reads them from host memory itself, and pinning many small
buffers costs more than it saves. The labels (one small tensor a batch) are copied non-blocking.
"""
from __future__ import annotations

import io
import logging
from typing import Iterator

import torch

from ...errors import UserError
from .decode import decode_jpeg_on, decode_jpegs, is_jpeg, read_bytes
from .loader import FolderImages

log = logging.getLogger("isda_exp")
DECODE = ("workers", "device")
_DECODE_ERRORS = (RuntimeError, ValueError)  # what decode_jpeg raises on a file it cannot decode
_DECODES_ON: dict[torch.device, bool] = {}  # decodes_on's answers in this process


def check_decode(decode) -> str:
    """dataset.decode's value, or one line naming the two choices."""
    if decode not in DECODE:
        raise UserError(f"dataset.decode={decode} is not allowed: use workers (decode in the "
                        "DataLoader workers, the default) or device (decode batches on the "
                        "training device)")
    return decode


class FileBytes(torch.utils.data.Dataset):
    """A worker's item: the file's raw bytes (empty when it cannot be read) and the item's key."""

    def __init__(self, images: FolderImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        try:
            return read_bytes(self.images.path(index)), key
        except (RuntimeError, OSError, ValueError):  # the main process reports and replaces it
            return torch.empty(0, dtype=torch.uint8), key


def collate_bytes(items) -> tuple[torch.Tensor, list[int], list]:
    """One buffer a batch (the files' tensors cannot be sent from a worker as they are, and one
    shared-memory block a batch is cheaper than one a file), the files' lengths, their keys."""
    datas = [data for data, _ in items]
    return torch.cat(datas), [len(data) for data in datas], [key for _, key in items]


def _probe_jpeg() -> torch.Tensor:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(out, "JPEG")
    return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)


def decodes_on(device: torch.device) -> bool:
    """Whether decode_jpeg works on `device`: tried once per process on a tiny JPEG; when it does
    not, one warning (the training and evaluation loaders then all decode on the CPU)."""
    if device.type == "cpu":
        return True
    if device not in _DECODES_ON:
        try:
            decode_jpegs([_probe_jpeg()], device)
            _DECODES_ON[device] = True
        except Exception as e:  # a TorchCodec built without nvJPEG, a driver that refuses it
            log.warning(f"dataset.decode=device: TorchCodec cannot decode JPEG on {device} "
                        f"({type(e).__name__}: {str(e).strip()[:200]}); decoding on the CPU")
            _DECODES_ON[device] = False
    return _DECODES_ON[device]


class JpegDecoder:
    """Batched JPEG decoding on a device, or on the CPU where that device's decode_jpeg fails."""

    def __init__(self, device: torch.device):
        self.device, self.checked = torch.device(device), False

    def _check(self) -> None:
        self.checked = True
        if not decodes_on(self.device):
            self.device = torch.device("cpu")

    def decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """uint8 [3, H, W] per item on self.device, None where it is no JPEG or fails to decode."""
        if not self.checked:
            self._check()
        out: list[torch.Tensor | None] = [None] * len(datas)
        jpegs = [i for i, data in enumerate(datas) if is_jpeg(data)]
        if not jpegs:
            return out
        try:
            decoded = decode_jpegs([datas[i] for i in jpegs], self.device)
        except _DECODE_ERRORS:  # one bad file fails the whole call: decode each on its own
            decoded = [self._one(datas[i]) for i in jpegs]
        for i, img in zip(jpegs, decoded):
            out[i] = img
        return out

    def _one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg_on(data, self.device)
        except _DECODE_ERRORS:
            return None


class DeviceDecodeLoader:
    """Iterates (uint8 [n, 3, S, S], int64 labels, failed file indices) on the device, batch by batch
    as the sampler gives them; a stand-in for folder_stream's DataLoader (make_loader)."""

    def __init__(self, images: FolderImages, batch_sampler, device: torch.device, num_workers: int,
                 persistent: bool):
        self.images, self.device = images, torch.device(device)
        self.decoder = JpegDecoder(self.device)
        self.loader = torch.utils.data.DataLoader(
            FileBytes(images), batch_sampler=batch_sampler, num_workers=num_workers,
            collate_fn=collate_bytes, persistent_workers=persistent and num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for flat, lengths, keys in self.loader:
            yield self.batch(list(torch.split(flat, lengths)), keys)

    def batch(self, datas: list[torch.Tensor], keys: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A batch as FolderImages + folder_stream.collate make it, decoded and transformed here."""
        images, used = [], []
        for img, key in zip(self.decoder.decode(datas), keys):
            epoch, index = key if isinstance(key, tuple) else (None, key)
            j = index
            if img is None:  # the workers' path: decode_file on the CPU, or the next readable
                img, j = self.images._read_from(index)
            img = img.to(self.device, non_blocking=True)
            images.append(self.images.transformed(img, epoch, index))
            used.append((j, index))
        labels = self.images.labels[[j for j, _ in used]].to(self.device, non_blocking=True)
        failed = [self.images.failed(index, j) for j, index in used]
        return torch.stack(images), labels, [f for f in failed if f]
