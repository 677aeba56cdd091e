"""dataset.decode=device: workers read bytes, batches are decoded and transformed on the
training device. On the CPU it gives exactly the batches, labels and bad_images counts of
decode=workers (whole epochs, a resume mid-epoch, the ranks' shares, evaluation, PNGs and
unreadable files); a CUDA device that cannot decode JPEG falls back to the CPU with one warning."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT
from isda_exp.cli.train import run
from isda_exp.data import load_synthetic
from isda_exp.data.cifar_augment import build_augment
from isda_exp.data.folder import device_decode as folder_decode
from isda_exp.data.folder import load_folder
from isda_exp.data.folder.decode import decode_file, decode_jpegs, read_bytes
from isda_exp.data.folder import loader as folder_stream
from isda_exp.data.folder.device_decode import DeviceDecodeLoader, JpegDecoder
from isda_exp.errors import UserError
from isda_exp.paths import config_dir
from isda_exp.rundir.identity import science_config
from isda_exp.training.build import build_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 classes of the synthetic set's images, 10 training and 4 validation each, 28 px, every
    third one a PNG (scripts/cifar_folder.py's writer)."""
    spec = importlib.util.spec_from_file_location("cifar_folder", ROOT / "scripts" / "cifar_folder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    d = load_synthetic(num_classes=4, train_size=80, test_size=40)
    root = tmp_path_factory.mktemp("decode") / "data"
    for split, x, y, n in (("train", d.x_train, d.y_train, 10), ("val", d.x_test, d.y_test, 4)):
        script.write_split(root / split, x.permute(0, 2, 3, 1).numpy(), y.numpy(), n, 28, 90, 3)
    return root


def source(root, decode, **kw):
    return load_folder("folder", str(root), train_crop=16, eval_resize=20, eval_crop=16,
                       decode=decode, **kw)


def epoch(d, ep=1, start=0, workers=0, rank=0, world=1):
    stream = d.train_stream(build_augment("baseline", 0), 8, 7, CPU, workers, rank, world)
    return list(stream.epoch(ep, start))


def evaluation(d, rank=0, world=1, batch=6):
    return list(d.eval_stream(CPU, rank, world).batches(batch))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def test_training_batches_equal_the_workers_path_whole_resumed_and_per_rank(folder):
    workers, device = source(folder, "workers"), source(folder, "device")
    names = [f.decode() for f in device.train_files]
    assert sum(n.endswith(".png") for n in names) == 12 and len(names) == 40  # both decoders used
    whole = epoch(workers)
    assert [len(y) for _, y in whole] == [8] * 5 and whole[0][0].dtype == torch.uint8
    assert same(epoch(device), whole)
    assert same(epoch(device, workers=2), whole)  # bytes read in worker processes
    assert same(epoch(device, start=3), whole[3:])  # resumed at batch 3
    halves = [epoch(device, rank=r, world=2) for r in (0, 1)]
    assert same([(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*halves)], whole)
    assert not same(epoch(device, ep=2), whole)  # another epoch, other crops


def test_evaluation_batches_equal_the_workers_path(folder):
    workers, device = source(folder, "workers"), source(folder, "device")
    whole = evaluation(workers)
    assert sum(len(y) for _, y in whole) == 16 and whole[0][0].shape == (6, 3, 16, 16)
    assert same(evaluation(device), whole)
    for r in (0, 1):
        assert same(evaluation(device, r, 2), evaluation(workers, r, 2))


def test_unreadable_files_are_replaced_and_counted_as_by_the_workers(folder, tmp_path, caplog,
                                                                     monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    names = [f.decode() for f in source(root, "workers").train_files]
    jpg = next(n for n in names[6:] if n.endswith(".jpg"))
    png = next(n for n in names[20:] if n.endswith(".png"))
    (root / "train" / jpg).write_bytes(b"\xff\xd8\xff\xe0 a JPEG header, then nothing of a JPEG")
    (root / "train" / png).write_bytes(b"\x89PNG\r\n\x1a\n not a PNG after all")
    results = {}
    for decode in ("workers", "device"):
        monkeypatch.setattr(folder_stream, "_WARNED", set())  # each mode logs as a new process
        caplog.clear()
        d = source(root, decode)
        with caplog.at_level(logging.WARNING, logger="isda_exp"):
            results[decode] = (epoch(d), d.bad.take(), evaluation(d), caplog.text)
    (train_w, bad_w, eval_w, log_w), (train_d, bad_d, eval_d, log_d) = results["workers"], results["device"]
    assert bad_w == 2 and bad_d == 2  # each bad file served once in the epoch
    assert same(train_d, train_w) and same(eval_d, eval_w)
    for log in (log_w, log_d):
        assert log.count("unreadable image") == 2
        assert str(root / "train" / jpg) in log and str(root / "train" / png) in log


def test_the_config_option_a_bad_value_in_one_line_and_decode_is_no_science_key(folder):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        default, device, bad = (compose("train", overrides=[
            "dataset=imagenet", f"dataset.root={folder}", "dataset.num_classes=4", *extra])
            for extra in ([], ["dataset.decode=device"], ["dataset.decode=gpu"]))
    assert default.dataset.decode == "workers"
    assert build_data(default).make_loader is None  # the workers' DataLoader, as before
    stream = build_data(device).train_stream(build_augment("baseline", 0), 8, 0, CPU, 0)
    assert isinstance(stream.loader, DeviceDecodeLoader)
    with pytest.raises(UserError, match="dataset.decode=gpu is not allowed: use workers .* or device") as e:
        build_data(bad)
    assert "\n" not in str(e.value)
    # the same pixels: a run resumes, and averages, across the two modes
    assert science_config(default) == science_config(device)
    assert "decode" not in science_config(default)["dataset"]


def test_a_device_that_cannot_decode_jpeg_falls_back_to_the_cpu_with_one_warning(folder, monkeypatch,
                                                                                 caplog):
    calls = []

    def decode_jpegs_cpu_only(datas, device):
        calls.append(torch.device(device).type)
        if torch.device(device).type != "cpu":
            raise RuntimeError("decode_jpeg on cuda is not supported by this TorchCodec build")
        return decode_jpegs(datas, device)
    monkeypatch.setattr(folder_decode, "decode_jpegs", decode_jpegs_cpu_only)
    monkeypatch.setattr(folder_decode, "_DECODES_ON", {})
    files = sorted((folder / "train").rglob("*.jpg"))[:5]
    datas = [read_bytes(str(f)) for f in files]
    expected = [decode_file(str(f)) for f in files]  # the workers' decoder, file by file
    decoders = [JpegDecoder(torch.device("cuda")) for _ in range(2)]  # training, evaluation
    with caplog.at_level(logging.WARNING, logger="isda_exp"):
        for decoder in decoders * 2:
            got = decoder.decode(datas)
            assert len(got) == 5 and all(torch.equal(a, b) and a.device == CPU
                                         for a, b in zip(got, expected))
    assert [d.device for d in decoders] == [CPU, CPU]
    assert calls == ["cuda", "cpu", "cpu", "cpu", "cpu"]  # one probe, then the batches
    assert caplog.text.count("cannot decode JPEG on cuda") == 1 and "decoding on the CPU" in caplog.text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_batches_decode_with_nvjpeg_close_to_the_workers_path(folder):
    """nvjpeg's IDCT and upsampling and the GPU's resize differ from libjpeg-turbo and the CPU's
    uint8 resize by a few grey levels in some pixels: close, not bit-identical."""
    gpu = torch.device("cuda")
    workers, device = source(folder, "workers"), source(folder, "device")
    stream = device.train_stream(build_augment("baseline", 0), 8, 7, gpu, 0)
    got, expected = list(stream.epoch(1)), epoch(workers)
    assert stream.loader.decoder.device.type == "cuda"  # decoded by nvjpeg, no CPU fallback
    assert len(got) == len(expected)
    for (x, y), (xe, ye) in zip(got, expected):
        assert x.device.type == "cuda" and x.dtype == torch.uint8 and x.shape == xe.shape
        assert torch.equal(y.cpu(), ye)
        assert (x.cpu().float() - xe.float()).abs().mean() < 2.0
    ev = list(device.eval_stream(gpu).batches(6))
    for (x, y), (xe, ye) in zip(ev, evaluation(workers)):
        assert torch.equal(y.cpu(), ye) and (x.cpu().float() - xe.float()).abs().mean() < 2.0


def test_a_run_with_decode_device_gives_the_metrics_of_decode_workers(folder, tmp_path):
    """The whole loop (build, train, evaluate, bad_images) on the CPU: the same metric rows."""
    rows = {}
    for decode in ("workers", "device"):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[
                "dataset=folder", f"dataset.root={folder}", f"dataset.decode={decode}",
                "dataset.train_crop=16", "dataset.eval_resize=20", "dataset.eval_crop=16",
                "model=resnet32", "+model.net.base_width=4", "isda=diagonal", "trainer.batch_size=8",
                "trainer.epochs=1", "trainer.num_workers=0", "trainer.threads=1",
                "trainer.progress=false", "trainer.tensorboard=false", "device=cpu"])
        run(cfg, tmp_path / decode)
        rows[decode] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                        for line in (tmp_path / decode / "metrics.jsonl").read_text().splitlines()]
    assert len(rows["workers"]) == 1 and "bad_images" in rows["workers"][0]
    assert rows["device"] == rows["workers"]
