"""scripts/cifar_parts.py: arrays split into parts of at most the limit come back bit for bit (every
key, dtype and value, in order); a missing or damaged part is one clear line, and nothing is written."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cifar_npz

sys.path.insert(0, str(ROOT / "scripts"))
import cifar_parts  # noqa: E402

SCRIPT = [sys.executable, str(ROOT / "scripts" / "cifar_parts.py")]
MIB = 1 << 20


def arrays(rng) -> dict:
    """CIFAR's keys and dtypes, plus what a CIFAR-100 file or a user's file may hold besides."""
    return {"x_train": rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 300).astype(np.int64),
            "x_test": np.repeat(np.arange(256, dtype=np.uint8)[:, None, None, None], 3, 3)
            .repeat(32, 1).repeat(32, 2)[:50],  # flat images: the easy case for WebP
            "y_test": rng.integers(0, 10, 50).astype(np.int64),
            "classes": np.array(["airplane", "automobile", "bird"]),
            "extra_float": rng.normal(size=(7, 3)).astype(np.float32),
            "empty_images": np.zeros((0, 32, 32, 3), np.uint8)}


def run(*args):
    return subprocess.run([*SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_same(a_path, b_path):
    with np.load(a_path) as a, np.load(b_path) as b:
        assert a.files == b.files  # the same keys in the same order
        for k in a.files:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), k


def test_split_then_join_gives_the_arrays_back_bit_for_bit(tmp_path):
    src = tmp_path / "cifar10.npz"
    np.savez(src, **arrays(np.random.default_rng(0)))
    limit = 0.25  # MiB: the payload (~0.9 MiB of noise images) makes several parts
    proc = run("split", src, tmp_path / "parts", "--part-mib", limit)
    assert proc.returncode == 0, proc.stderr
    parts = sorted((tmp_path / "parts").rglob("cifar10.part*of*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= limit * MIB for p in parts)
    sizes = {p.stat().st_size for p in parts}
    assert max(sizes) - min(sizes) <= 1  # cut evenly: no part is a near-empty remainder
    for k, p in enumerate(parts, start=1):  # part k in folder k, with its manifest
        assert p.parent.name == str(k) and (p.parent / "cifar10.parts.json").is_file()
    proc = run("join", tmp_path / "parts", tmp_path / "back.npz")
    assert proc.returncode == 0, proc.stderr
    assert_same(src, tmp_path / "back.npz")


def test_join_finds_the_parts_in_one_folder_too(tmp_path):
    src = tmp_path / "a.npz"
    np.savez(src, **arrays(np.random.default_rng(1)))
    cifar_parts.split(src, tmp_path / "split", 0.3, min_parts=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "split").rglob("*"):
        if p.is_file():
            (flat / p.name).write_bytes(p.read_bytes())
    cifar_parts.join(flat, tmp_path / "back.npz")
    assert_same(src, tmp_path / "back.npz")


def test_a_missing_or_damaged_part_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "cifar10.npz"
    np.savez(src, **arrays(np.random.default_rng(2)))
    cifar_parts.split(src, tmp_path / "parts", 10, min_parts=2)
    second = next((tmp_path / "parts" / "2").glob("*.part2of2"))
    data = second.read_bytes()
    second.unlink()
    proc = run("join", tmp_path / "parts", tmp_path / "out.npz")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "part 2 of 2 (cifar10.part2of2" in proc.stderr and "is not under" in proc.stderr
    second.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    proc = run("join", tmp_path / "parts", tmp_path / "out.npz")
    assert proc.returncode == 2 and "part 2" in proc.stderr and "damaged" in proc.stderr
    assert not list(tmp_path.glob("out*"))


def test_object_arrays_are_refused(tmp_path):
    src = tmp_path / "objects.npz"
    np.savez(src, x=np.array([{"a": 1}], dtype=object))
    proc = run("split", src, tmp_path / "parts")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "parts").exists()


def test_budget_counts_the_tree_and_the_carried_paths(tmp_path):
    (tmp_path / "carry").mkdir()
    (tmp_path / "carry" / "blob").write_bytes(b"\0" * (3 * MIB))
    tree = cifar_parts.tree_bytes(ROOT)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    assert tree == sum((ROOT / n).stat().st_size for n in listed
                       if n and (ROOT / n).is_file() and not (ROOT / n).is_symlink())
    proc = run("budget", tmp_path / "carry", "--root", ROOT, "--limit-mib", 64)
    assert proc.returncode == 0 and "fits" in proc.stdout
    proc = run("budget", tmp_path / "carry", "--root", ROOT, "--limit-mib", tree / MIB + 2)
    assert proc.returncode == 1 and "TOO LARGE" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_both_cifar_archives_travel_in_two_calls(pytestconfig, tmp_path_factory, tmp_path, name):
    """Each part at most 60 MiB, and with the working tree and the wheels inside one call's 64 MiB."""
    src = cifar_npz(pytestconfig, tmp_path_factory, name)
    parts = cifar_parts.split(src, tmp_path / "parts", 60.0)
    assert len(parts) == 2 and all(p.stat().st_size <= 60 * MIB for p in parts)
    wheels = 0.5 * MIB  # hydra-core, omegaconf, antlr4 runtime, the joblib launcher: 0.39 MiB
    for p in parts:
        assert cifar_parts.tree_bytes(ROOT) + cifar_parts.path_bytes(p.parent) + wheels <= 64 * MIB
    cifar_parts.join(tmp_path / "parts", tmp_path / "back.npz")
    assert_same(src, tmp_path / "back.npz")
