"""Sample keys.

WebDataset splits a member name at its first dot into key and extension, so a key with a dot would silently
become a different key plus a bogus extension. Keys are therefore restricted to a small, path-safe alphabet.
"""

from __future__ import annotations

import base64
import hashlib
import re

MAX_KEY_LENGTH = 128
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidKeyError(ValueError):
    """A sample key breaks the key rules."""


def validate_key(key: str) -> str:
    """Return `key` if it is a valid sample key, else raise InvalidKeyError saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"sample key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"sample key longer than {MAX_KEY_LENGTH} characters: {key[:40]!r}...")
    if not _KEY_RE.match(key):
        raise InvalidKeyError(
            f"sample key {key!r} may only hold letters, digits, '_' and '-' (no dots, slashes or spaces)"
        )
    return key


def make_key(*parts: str | int) -> str:
    """Build a valid key from parts, e.g. make_key("scene", 42) -> "scene_000000042"."""
    pieces = [f"{p:09d}" if isinstance(p, int) else str(p) for p in parts]
    return validate_key("_".join(pieces))


def sanitize_key(raw: str) -> str:
    """Map an arbitrary source name (file stem, parquet id) to a valid, stable key.

    Characters outside the alphabet become '-'; a short hash of the raw name keeps two names that sanitize to the
    same text apart, so no two distinct sources ever share a key.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[: MAX_KEY_LENGTH - 9].strip("-") or "key"
    if cleaned == raw and len(raw) <= MAX_KEY_LENGTH:
        return raw
    digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return validate_key(f"{cleaned}-{digest}")


def in_holdout(key: str, fraction: float, salt: str = "") -> bool:
    """Whether `key` falls in a held-out split of about `fraction` of all keys.

    The first 8 bytes of sha256(salt + key), read as a fraction of 2**64, against `fraction`: the same answer in
    every process, run and machine, and independent of shard order. Splits with the same salt nest (a key held out
    at 5% is held out at 30%), so pretraining validation, tokenizer evaluation and eval score sets drawn without a
    salt never train on each other's held-out keys; a salt draws an independent split.
    """
    value = int.from_bytes(hashlib.sha256((salt + key).encode("utf-8")).digest()[:8], "big") / 2**64
    return value < fraction


def key_hash(key: str) -> int:
    """A key's 64-bit hash (BLAKE2b), as unit records carry it for the job's check that no two units share a key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def encode_key_hashes(keys: list[str]) -> str:
    """The keys' hashes, 8 little-endian bytes each in key order, as base64: ~11 characters a key in a record."""
    return base64.b64encode(b"".join(key_hash(k).to_bytes(8, "little") for k in keys)).decode()


def decode_key_hashes(text: str) -> bytes:
    """`encode_key_hashes`'s bytes back (8 per key); raises ValueError for text that is not such a list."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 8:
        raise ValueError(f"key hashes of {len(raw)} bytes, not a multiple of 8")
    return raw
