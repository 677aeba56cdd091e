"""An image folder of the files users really have, written here with Pillow: CMYK, grayscale,
RGBA, palette, 16-bit PNG, progressive JPEG, a PNG named .JPEG and a JPEG named .png, WebP, GIF
(animated), BMP, TIFF, EXIF-rotated, 8x8 and 1500x2000 images, unicode class names, nested
folders, symlinked files and folders; and truncated, empty, garbage files and a dangling link.

Every decodable file decodes to the pixels Pillow gives (an independent decoder; 16-bit as
round(v / 257)), and a tiny run trains to the end on the folder with every decodable image used:
the files of other extensions are counted in the log, each bad file is logged once in one short
line, replaced and counted per epoch, and named in the run's records."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image, ImageOps

from isda_exp.cli.train import run
from isda_exp.data.folder import decode_file, load_folder
from isda_exp.data.folder.decode import Undecodable
from isda_exp.paths import config_dir

CLASSES = ("café", "猫", "ελάφι")


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour ramps (JPEG-friendly) with a class-dependent tint."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     (xx + yy) * 127 // max(h + w - 2, 1)], -1)
    return ((base + 60 * seed) % 256).astype(np.uint8)


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, **kw)
    return out.getvalue()


def good_files(seed: int) -> dict[str, tuple[bytes, object]]:
    """name -> (bytes, the expected RGB array or None to compare with Pillow's own decode)."""
    rgb = Image.fromarray(_pattern(40, 56, seed))
    gray16 = (np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * 29).astype(np.uint16)
    files = {}

    def save(name, img, fmt, **kw):
        out = io.BytesIO()
        img.save(out, fmt, **kw)
        files[name] = (out.getvalue(), None)
    files["rgb.jpg"] = (_jpeg(rgb), None)
    files["cmyk.jpg"] = (_jpeg(rgb.convert("CMYK")), None)
    files["gray.jpeg"] = (_jpeg(rgb.convert("L")), None)
    files["progressive.jpg"] = (_jpeg(rgb, progressive=True), None)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    files["rotated.jpg"] = (_jpeg(rgb, exif=exif), None)
    save("rgba.png", rgb.convert("RGBA"), "PNG")
    save("palette.png", rgb.convert("P"), "PNG")
    files["gray16.png"] = (_encoded(Image.fromarray(gray16), "PNG"),
                           np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, -1))
    save("lossless.webp", rgb, "WEBP", lossless=True)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:])
    save("bitmap.bmp", rgb, "BMP")
    save("scan.tif", rgb, "TIFF")
    files["png_named.JPEG"] = (_encoded(rgb, "PNG"), None)
    files["jpeg_named.png"] = (_jpeg(rgb), None)
    files["tiny_8x8.jpg"] = (_jpeg(Image.fromarray(_pattern(8, 8, seed))), None)
    files["nested/deeper/large.jpg"] = (_jpeg(Image.fromarray(_pattern(2000, 1500, seed))), None)
    return files


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


BAD = {"truncated.jpg": lambda good: good[: len(good) // 2], "empty.jpg": lambda good: b"",
       "garbage.png": lambda good: bytes(np.random.default_rng(0).integers(0, 256, 700, np.uint8))}


def write_folder(root: Path) -> dict:
    """The folder; returns what it holds: good/bad image paths per split, ignored files."""
    held = {"good": [], "bad": [], "ignored": 0}
    for split, n_bad in (("train", len(BAD)), ("val", 1)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            for rel, (data, _) in good_files(c).items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
                held["good"].append(folder / rel)
            (folder / "notes.txt").write_text("not an image")
            held["ignored"] += 1
            if c == 0:  # the bad files, in the first class
                for bad_name, make in list(BAD.items())[:n_bad]:
                    (folder / bad_name).write_bytes(make((folder / "rgb.jpg").read_bytes()))
                    held["bad"].append(folder / bad_name)
    linked = root / "elsewhere"
    linked.mkdir()
    (linked / "outside.jpg").write_bytes(_jpeg(Image.fromarray(_pattern(30, 30, 1))))
    os.symlink(linked / "outside.jpg", root / "train" / CLASSES[1] / "linked.jpg")
    os.symlink(linked, root / "train" / CLASSES[2] / "linked_folder")
    held["good"] += [root / "train" / CLASSES[1] / "linked.jpg",
                     root / "train" / CLASSES[2] / "linked_folder" / "outside.jpg"]
    os.symlink(root / "gone.jpg", root / "train" / CLASSES[2] / "dangling.jpg")
    held["bad"].append(root / "train" / CLASSES[2] / "dangling.jpg")
    return held


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_world") / "data"
    return root, write_folder(root)


def pillow_rgb(path: Path) -> np.ndarray:
    """Pillow's decode: EXIF orientation applied, first frame, RGB."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_every_decodable_file_gives_pillows_pixels_as_uint8_rgb(folder):
    root, held = folder
    expected_16 = good_files(0)["gray16.png"][1]
    for path in held["good"]:
        img = decode_file(str(path))
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3, path
        want = expected_16 if path.name == "gray16.png" else pillow_rgb(path)
        got = img.permute(1, 2, 0).numpy()
        assert got.shape == want.shape, (path, got.shape, want.shape)
        if path.suffix.lower() in (".jpg", ".jpeg") and path.name != "png_named.JPEG":
            # libjpeg-turbo in both; Pillow's build may differ in IDCT/upsampling by a grey level
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 1.0, path
        else:  # lossless formats: exactly
            assert np.array_equal(got, want), path
    rotated = decode_file(str(root / "train" / CLASSES[0] / "rotated.jpg"))
    assert rotated.shape == (3, 56, 40)  # EXIF orientation 6 applied: the 56x40 image stands up
    for path in held["bad"]:
        with pytest.raises((Undecodable, OSError)):
            decode_file(str(path))


def test_a_run_trains_to_the_end_using_every_decodable_image(folder, tmp_path, caplog):
    root, held = folder
    n_train = sum(1 for p in held["good"] if "/train/" in str(p))
    n_val = sum(1 for p in held["good"] if "/val/" in str(p))
    bad_train = [p for p in held["bad"] if "/train/" in str(p)]
    bad_val = [p for p in held["bad"] if "/val/" in str(p)]
    source = load_folder("real", str(root), train_crop=16, eval_resize=18, eval_crop=16)
    assert (source.num_train, len(source.eval_files)) == (n_train + len(bad_train), n_val + len(bad_val))
    assert (n_train, n_val, len(bad_train), len(bad_val)) == (50, 48, 4, 1)  # 16 kinds x 3 classes
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=folder", f"dataset.root={root}", "dataset.name=real", "dataset.train_crop=16",
            "dataset.eval_resize=18", "dataset.eval_crop=16", "model=resnet32",
            "+model.net.base_width=4", "isda=diagonal", "trainer.batch_size=19", "trainer.epochs=2",
            "trainer.num_workers=0", "trainer.threads=1", "trainer.progress=false",
            "trainer.tensorboard=false", "device=cpu"])
    with caplog.at_level(logging.INFO, logger="isda_exp"):
        summary = run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and summary["epochs"] == 2
    assert summary["train_size"] == n_train + len(bad_train) and summary["test_size"] == n_val + len(bad_val)
    # each bad file's item is replaced once per pass, and each epoch's row names the files
    assert [r["bad_images"] for r in rows] == [len(bad_train) + len(bad_val)] * 2
    names = sorted(str(p.relative_to(root)) for p in held["bad"])
    assert [r["bad_files"] for r in rows] == [names] * 2 and summary["bad_files"] == names
    log = caplog.text
    assert log.count("unreadable image") == len(names)  # once per file and process
    for line in log.splitlines():
        if "unreadable image" in line:
            assert ".cpp" not in line and len(line) < 400, line
    assert f"{len(CLASSES)} files of other extensions left out ({len(CLASSES)} .txt)" in log
    assert all(np.isfinite(r["train_loss"]) for r in rows)
