"""A raw corpus of corrupt, hostile and unusual inputs, with the outcome each one must get.

`write_hostile_corpus(dir)` writes tars in the img2dataset layout and returns the sorted (source key, outcome)
pairs the job must produce, where outcome is "written" or the quarantine reason; a key may appear twice (a
duplicate is written once and quarantined once). Every case of the preprocess issue's decode/validate list is here.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.tar_io import FIXED_MTIME, tar_bytes

MAX_PIXELS = 1_000_000  # the test config's decompression-bomb limit


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_image(seed: int, size=(40, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def unusual_images() -> dict[str, tuple[str, bytes]]:
    """Images of every awkward PIL mode that must decode: key -> (ext, bytes)."""
    base = rgb_image(1)
    gray16 = Image.fromarray((np.arange(40 * 32, dtype=np.uint16).reshape(32, 40) * 50))
    palette_alpha = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_alpha.info["transparency"] = 0
    return {
        "mode_rgb_jpeg": ("jpg", encode(base, "JPEG")),
        "mode_i16_png": ("png", encode(gray16, "PNG")),
        "mode_cmyk_jpeg": ("jpg", encode(base.convert("CMYK"), "JPEG")),
        "mode_palette_png": ("png", encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")),
        "mode_palette_alpha_png": ("png", encode(palette_alpha, "PNG", transparency=0)),
        "mode_rgba_png": ("png", encode(base.convert("RGBA"), "PNG")),
        "mode_la_png": ("png", encode(base.convert("LA"), "PNG")),
        "mode_gray_webp": ("webp", encode(base.convert("L"), "WEBP")),
        "mode_bilevel_png": ("png", encode(base.convert("1"), "PNG")),
        "portrait_jpeg": ("jpg", encode(rgb_image(2, size=(30, 90)), "JPEG")),
    }


def _member(name: str, payload: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mtime = kind, link, len(payload), FIXED_MTIME
    return info


def _raw_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return buffer.getvalue()


def write_hostile_corpus(root: Path) -> list[tuple[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    good = encode(rgb_image(3), "JPEG")

    # part 0: every awkward image mode, all written
    members = []
    for key, (ext, payload) in unusual_images().items():
        members += [(f"{key}.{ext}", payload), (f"{key}.txt", f"caption of {key}".encode())]
        expected[key] = "written"
    (root / "part-000000.tar").write_bytes(tar_bytes(members))

    # part 1: bad samples, each quarantined for its own reason
    bomb = encode(Image.new("1", (1100, 1000)), "PNG")  # tiny file, 1.1M pixels > MAX_PIXELS
    cases = {
        "ok_before": ([("jpg", good), ("txt", b"fine")], "written"),
        "corrupt_image": ([("jpg", b"\xff\xd8\xff not really a jpeg"), ("txt", b"x")], "bad_image"),
        "truncated_image": ([("jpg", good[: len(good) // 2])], "bad_image"),
        "bomb": ([("png", bomb)], "decompression_bomb"),
        "too_small": ([("png", encode(rgb_image(4, size=(4, 4)), "PNG"))], "image_too_small"),
        "no_image": ([("txt", b"a caption without an image")], "missing_image"),
        "latin1_caption": ([("jpg", good), ("txt", "caf\xe9".encode("latin-1"))], "bad_caption"),
        "long_caption": ([("jpg", good), ("txt", b"word " * 400)], "bad_caption"),
        "nul_caption": ([("jpg", good), ("txt", b"a\x00b")], "bad_caption"),
        "nan_json": ([("jpg", good), ("json", b'{"score": NaN}')], "bad_metadata"),
        "dup_json": ([("jpg", good), ("json", b'{"a": 1, "a": 2}')], "bad_metadata"),
        "list_json": ([("jpg", good), ("json", b"[1, 2]")], "bad_metadata"),
        "broken_json": ([("jpg", good), ("json", b'{"a": ')], "bad_metadata"),
        "ok_after": ([("jpg", good), ("txt", "caf\u00e9 \u2615".encode())], "written"),
    }
    entries = []
    for key, (files, outcome) in cases.items():
        entries += [(_member(f"{key}.{ext}", payload), payload) for ext, payload in files]
        expected[key] = outcome
    # hostile member names and types: never followed, never written, each quarantined
    for name, kind, link in [("/etc/passwd.jpg", tarfile.REGTYPE, ""), ("../escape.jpg", tarfile.REGTYPE, ""),
                             ("sub/../../up.jpg", tarfile.REGTYPE, ""), ("link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                             ("hard.jpg", tarfile.LNKTYPE, "ok_before.jpg"), ("fifo.jpg", tarfile.FIFOTYPE, "")]:
        payload = good if kind == tarfile.REGTYPE else b""
        entries.append((_member(name, payload, kind, link), payload))
        expected[name] = "unsafe_member"
    entries += [(_member("bad key.jpg", good), good)]
    expected["bad key"] = "invalid_key"
    entries += [(_member("ok_before.txt", b"again"), b"again")]  # the key comes back after others
    duplicates = [("ok_before", "duplicate_key")]
    (root / "part-000001.tar").write_bytes(_raw_tar(entries))

    # part 2: a tar cut mid-member: the samples before the cut are written, the one it cut is quarantined
    members = []
    for i in range(4):
        members += [(f"cut_{i}.jpg", encode(rgb_image(10 + i), "JPEG")), (f"cut_{i}.txt", b"before the cut")]
    whole = tar_bytes(members)
    cut_inside = whole.index(b"cut_2.txt") + 512 + 5  # past cut_2.txt's header, inside its payload
    (root / "part-000002.tar").write_bytes(whole[:cut_inside])
    expected.update({"cut_0": "written", "cut_1": "written", "cut_2": "truncated"})

    # part 3: an empty tar (no members at all) still yields a shard in every folder
    (root / "part-000003.tar").write_bytes(tar_bytes([]))
    return sorted([*expected.items(), *duplicates])
