#!/usr/bin/env python
"""CIFAR arrays in parts small enough to travel, and back bit for bit.

    python scripts/cifar_parts.py split ARRAYS.npz DIR [--part-mib 60]
    python scripts/cifar_parts.py join DIR OUT.npz
    python scripts/cifar_parts.py budget PATH... [--limit-mib 64]

A machine reached only through size-limited transfers (each call at most 64 MiB, the working tree
included) cannot take CIFAR's 185 MB of arrays at once. `split` packs the arrays as one payload
(every uint8 image array [N, H, W, 3] as lossless WebP, about 60% of its bytes; any other array
zlib-compressed) and cuts it into the fewest parts of at most --part-mib MiB, all about the same
size: CIFAR-10 and CIFAR-100 each make two parts of about 53 MiB. Part k goes to DIR/k/ beside a
copy of the manifest (NAME.parts.json), so each transfer carries one folder. At split time every
image is decoded back and compared (an array that would not come back exact is kept zlib-packed
instead). `join` finds the parts anywhere under DIR, checks each part's and each array's SHA-256
against the manifest, and writes the arrays, same keys in the same order, as an uncompressed .npz.
`budget` prints what one transfer would carry: the working tree (git's tracked and untracked,
not ignored files) plus the given paths, against the limit.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from isda_exp.errors import UserError

FORMAT = "isda-cifar-parts/1"
MIB = 1 << 20
CHUNK = 2000  # images per worker task


# ------------------------------------------------------------------ images <-> WebP


def _encode_chunk(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="WEBP", lossless=True, quality=100, method=0)
        out.append(buf.getvalue())
    return out


def _decode_chunk(blobs: list[bytes]) -> np.ndarray:
    """WebP blobs -> uint8 [n, H, W, 3]; Pillow, else torchvision's libwebp (either is exact)."""
    from PIL import features

    if features.check("webp"):
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    import torch
    from torchvision.io import decode_webp

    return np.stack([decode_webp(torch.frombuffer(bytearray(b), dtype=torch.uint8))
                     .permute(1, 2, 0).numpy() for b in blobs])


def _pool_map(fn, chunks: list) -> list:
    if len(chunks) <= 1:
        return [fn(c) for c in chunks]
    with ProcessPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, chunks))


def encode_images(images: np.ndarray) -> bytes | None:
    """uint8 [N, H, W, 3] -> offsets (int64, N + 1) + WebP blobs, or None if any image would not
    decode back to the same pixels."""
    chunks = [images[i:i + CHUNK] for i in range(0, len(images), CHUNK)]
    blobs = [b for part in _pool_map(_encode_chunk, chunks) for b in part]
    decoded = _pool_map(_decode_chunk, [blobs[i:i + CHUNK] for i in range(0, len(blobs), CHUNK)])
    if not np.array_equal(np.concatenate(decoded) if decoded else images[:0], images):
        return None
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    return offsets.tobytes() + b"".join(blobs)


def decode_images(data: bytes, count: int) -> np.ndarray:
    offsets = np.frombuffer(data[:8 * (count + 1)], dtype=np.int64)
    raw = memoryview(data)[8 * (count + 1):]
    blobs = [bytes(raw[offsets[i]:offsets[i + 1]]) for i in range(count)]
    return np.concatenate(_pool_map(_decode_chunk, [blobs[i:i + CHUNK]
                                                    for i in range(0, count, CHUNK)]))


# ------------------------------------------------------------------ the payload


def _is_image_array(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3 and len(a) > 0


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(arrays: dict[str, np.ndarray]) -> tuple[bytes, list[dict]]:
    """The payload of every array, in order, and each array's manifest entry."""
    segments, entries, offset = [], [], 0
    for key, a in arrays.items():
        if a.dtype.hasobject:
            raise UserError(f"array {key!r} holds Python objects ({a.dtype}); only plain numeric "
                            "or string arrays can be split")
        a = np.ascontiguousarray(a)
        data = encode_images(a) if _is_image_array(a) else None
        encoding = "webp" if data is not None else "zlib"
        if data is None:
            data = zlib.compress(a.tobytes(), 6)
        entries.append({"key": key, "dtype": a.dtype.str, "shape": list(a.shape), "encoding": encoding,
                        "offset": offset, "length": len(data), "sha256": sha256(a.tobytes())})
        segments.append(data)
        offset += len(data)
    return b"".join(segments), entries


def unpack(payload: bytes, entries: list[dict]) -> dict[str, np.ndarray]:
    """The arrays back from the payload, each checked against its SHA-256."""
    out = {}
    for e in entries:
        data = payload[e["offset"]:e["offset"] + e["length"]]
        shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
        if e["encoding"] == "webp":
            a = decode_images(data, shape[0]).reshape(shape)
        else:
            a = np.frombuffer(zlib.decompress(data), dtype=dtype).reshape(shape)
        if sha256(np.ascontiguousarray(a).tobytes()) != e["sha256"]:
            raise UserError(f"array {e['key']!r} did not come back as it was split (SHA-256 differs); "
                            "split the arrays again")
        out[e["key"]] = a
    return out


# ------------------------------------------------------------------ split / join


def split(npz: Path, out_dir: Path, part_mib: float, min_parts: int = 1) -> list[Path]:
    """NAME.npz -> out_dir/k/NAME.partKofN (+ NAME.parts.json beside each); the part files: the
    fewest parts of at most part_mib MiB, and at least min_parts."""
    if not npz.is_file():
        raise UserError(f"{npz} not found; give the arrays (.npz of x_train, y_train, x_test, y_test)")
    if part_mib <= 0:
        raise UserError(f"--part-mib {part_mib} must be positive")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:  # not an .npz, truncated, or object arrays
        raise UserError(f"{npz} is not a readable .npz of plain arrays ({e})") from None
    payload, entries = pack(arrays)
    count = max(1, min_parts, math.ceil(len(payload) / (part_mib * MIB)))
    name = npz.name.removesuffix(".npz")
    size, extra = divmod(len(payload), count)  # even parts: the first `extra` are a byte longer
    bounds = [k * size + min(k, extra) for k in range(count + 1)]
    pieces = [payload[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    files = [f"{name}.part{k + 1}of{count}" for k in range(count)]
    manifest = {"format": FORMAT, "name": name, "source": npz.name, "payload_bytes": len(payload),
                "payload_sha256": sha256(payload), "arrays": entries,
                "parts": [{"file": f, "bytes": len(p), "sha256": sha256(p)} for f, p in zip(files, pieces)]}
    written = []
    for k, (f, piece) in enumerate(zip(files, pieces), start=1):
        folder = out_dir / str(k)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / f, piece)
        _write_atomic(folder / f"{name}.parts.json", (json.dumps(manifest, indent=1) + "\n").encode())
        written.append(folder / f)
    return written


def find_manifest(parts_dir: Path) -> tuple[dict, list[Path]]:
    """The one manifest under parts_dir (every copy identical) and where each of its parts lies."""
    if not parts_dir.is_dir():
        raise UserError(f"{parts_dir} is not a folder; give the folder that holds the parts")
    copies = {p.read_text() for p in parts_dir.rglob("*.parts.json")}
    if not copies:
        raise UserError(f"no *.parts.json under {parts_dir}; it does not hold split arrays")
    manifests = [json.loads(text) for text in copies]
    if len({(m.get("name"), m.get("payload_sha256")) for m in manifests}) > 1:
        raise UserError(f"{parts_dir} holds parts of different splits "
                        f"({', '.join(sorted({str(m.get('name')) for m in manifests}))}); "
                        "give a folder holding one split")
    manifest = manifests[0]
    if manifest.get("format") != FORMAT:
        raise UserError(f"manifest format {manifest.get('format')!r}, expected {FORMAT!r}")
    found = []
    for k, part in enumerate(manifest["parts"], start=1):
        hits = [p for p in parts_dir.rglob(part["file"]) if p.is_file() and p.stat().st_size == part["bytes"]]
        if not hits:
            raise UserError(f"part {k} of {len(manifest['parts'])} ({part['file']}, {part['bytes']} bytes) "
                            f"is not under {parts_dir}: bring it (split wrote it to DIR/{k}/)")
        found.append(hits[0])
    return manifest, found


def join(parts_dir: Path, out: Path) -> dict[str, np.ndarray]:
    manifest, files = find_manifest(parts_dir)
    pieces = []
    for k, (part, path) in enumerate(zip(manifest["parts"], files), start=1):
        data = path.read_bytes()
        if sha256(data) != part["sha256"]:
            raise UserError(f"part {k} ({path}) is damaged (SHA-256 differs from the manifest); "
                            "bring that part again")
        pieces.append(data)
    payload = b"".join(pieces)
    if sha256(payload) != manifest["payload_sha256"]:
        raise UserError("the joined parts differ from the split payload; split the arrays again")
    arrays = unpack(payload, manifest["arrays"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return arrays


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------ what one transfer carries


def tree_bytes(root: Path) -> int:
    """Bytes of git's tracked and untracked-but-not-ignored files under root (what travels)."""
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError) as e:
        raise UserError(f"cannot list the working tree of {root} with git ({e})") from None
    paths = [root / os.fsdecode(n) for n in names if n]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def path_bytes(path: Path) -> int:
    if not path.exists():
        raise UserError(f"{path} not found")
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def budget(paths: list[Path], limit_mib: float, root: Path) -> bool:
    tree = tree_bytes(root)
    sizes = [(str(p), path_bytes(p)) for p in paths]
    total = tree + sum(s for _, s in sizes)
    print(f"working tree {tree / MIB:8.2f} MiB")
    for name, size in sizes:
        print(f"{name:<12} {size / MIB:8.2f} MiB")
    ok = total <= limit_mib * MIB
    print(f"{'total':<12} {total / MIB:8.2f} MiB of {limit_mib:g} MiB: {'fits' if ok else 'TOO LARGE'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="ARRAYS.npz -> DIR/1, DIR/2, ... (parts + manifest)")
    s.add_argument("npz", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--part-mib", type=float, default=60.0, help="the largest part, MiB (default 60)")
    s.add_argument("--parts", type=int, default=1, help="at least this many parts (default 1)")
    j = sub.add_parser("join", help="DIR (the parts, in any folders below it) -> OUT.npz")
    j.add_argument("parts_dir", type=Path)
    j.add_argument("out", type=Path)
    b = sub.add_parser("budget", help="the working tree + these paths, against the transfer limit")
    b.add_argument("paths", type=Path, nargs="*")
    b.add_argument("--limit-mib", type=float, default=64.0)
    b.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = p.parse_args(argv)
    try:
        if args.command == "split":
            for path in split(args.npz, args.out_dir, args.part_mib, args.parts):
                print(f"wrote {path} ({path.stat().st_size / MIB:.2f} MiB)")
        elif args.command == "join":
            arrays = join(args.parts_dir, args.out)
            print(f"wrote {args.out}: " + ", ".join(f"{k} {list(a.shape)}" for k, a in arrays.items()))
        else:
            return 0 if budget(args.paths, args.limit_mib, args.root) else 1
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
