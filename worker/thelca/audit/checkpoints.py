"""Signed checkpoints: now and then, how many lines the log has and the hash of the last.

`<log>.checkpoints` holds one JSON object per line:

    {"time": ..., "lines": N, "last": "<SHA-256 hex of line N>", "key": "<key id>",
     "sig": "<base64 Ed25519 signature>"}

N counts every line of the log, segments included. The key id is the first 16
hex digits of the SHA-256 of the raw 32-byte public key; the signature covers
the object without `sig` as `json.dumps(o, sort_keys=True, separators=(",", ":"))`.
Unsigned checkpoints (no signing key) have `"key": null, "sig": null`.

A chain recomputed after an edit, or a log cut short, still looks whole on its
own; it no longer matches a checkpoint signed before, if the checkpoints were
kept where the one who edited the log could not rewrite them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from thelca.errors import ConfigurationError

SIGNING_KEY_ENV = "THELCA_LOG_SIGNING_KEY"
INTERVAL = 9.0  # seconds between checkpoints: the contract's 10, less a caller's timer tick
SUFFIX = ".checkpoints"
_HASH = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def checkpoints_path(log: str | Path) -> Path:
    """Where a log's checkpoints go: `<log>.checkpoints`, beside it."""
    log = Path(log)
    return log.with_name(log.name + SUFFIX)


# ---------------------------------------------------------------- keys


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; ConfigurationError saying what is wrong."""
    what = f"the log signing key {path} ({SIGNING_KEY_ENV})"
    pem = _read_key(path, what)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # it is encrypted
        raise ConfigurationError(f"{what} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{what} is not a PEM private key (`thelca dev-keys` writes "
                                 "one: log-signing.pem)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{what} is not an Ed25519 key (`thelca dev-keys` writes "
                                 "one: log-signing.pem)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; ConfigurationError saying what is wrong."""
    what = f"the public key {path}"
    pem = _read_key(path, what)
    if b"PRIVATE KEY" in pem:
        raise ConfigurationError(f"{what} holds a private key: give its public key "
                                 "(log-signing.pub.pem), which is all an auditor needs")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{what} is not an Ed25519 key")
    return key


def _read_key(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {what}: {error.strerror or error}") from None


# ---------------------------------------------------------------- records


def signed_part(record: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: the record without `sig`, canonical."""
    unsigned = {name: value for name, value in record.items() if name != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def make_record(lines: int, last: str, key: Ed25519PrivateKey | None,
                moment: datetime | None = None) -> dict[str, Any]:
    """A checkpoint record for the log's first `lines` lines, signed when there is a key."""
    record: dict[str, Any] = {
        "time": (moment or datetime.now(UTC)).isoformat(timespec="microseconds"),
        "lines": lines,
        "last": last,
        "key": None if key is None else key_id(key.public_key()),
    }
    signature = None if key is None else base64.b64encode(key.sign(signed_part(record)))
    record["sig"] = None if signature is None else signature.decode()
    return record


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as read back: its fields, and the whole record its signature covers."""

    time: str
    lines: int
    last: str
    key: str | None
    sig: str | None
    record: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> Checkpoint:
        """A checkpoint from one line of the file; ValueError saying what is wrong with it."""
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        lines, last = record.get("lines"), record.get("last")
        key, sig, moment = record.get("key"), record.get("sig"), record.get("time")
        if not isinstance(moment, str):
            raise ValueError("no time")
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise ValueError("`lines` is not a whole number")
        if not isinstance(last, str) or not _HASH.fullmatch(last):
            raise ValueError("`last` is not a lowercase hex SHA-256")
        if key is not None and (not isinstance(key, str) or not _KEY_ID.fullmatch(key)):
            raise ValueError("`key` is not 16 lowercase hex digits")
        if sig is not None and not isinstance(sig, str):
            raise ValueError("`sig` is not a string")
        if (key is None) != (sig is None):
            raise ValueError("`key` and `sig` must both be set or both be null")
        return cls(moment, lines, last, key, sig, record)

    def problem_with_signature(self, keys: dict[str, Ed25519PublicKey]) -> str | None:
        """Why the signature does not verify under the keys (by key id), or None when it does."""
        if self.sig is None or self.key is None:
            return "unsigned"
        public = keys.get(self.key)
        if public is None:
            return f"signed by key {self.key}, which no --public-key has"
        try:
            signature = base64.b64decode(self.sig, validate=True)
        except (binascii.Error, ValueError):
            return "its signature is not base64"
        try:
            public.verify(signature, signed_part(self.record))
        except InvalidSignature:
            return f"its signature does not verify under key {self.key}"
        return None


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without newline, whether it lacks its newline) for each line.

    Streams the file; raises FileNotFoundError / OSError when it cannot be read.
    """
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if line.endswith(b"\n"):
                yield number, line[:-1], False
            else:
                yield number, line, True


def last_checkpoint(path: str | Path, tail: int = 1 << 16) -> Checkpoint | None:
    """The file's last readable checkpoint, from its last `tail` bytes; None when none is."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - tail))
        data = file.read()
    for raw in reversed(data.split(b"\n")):
        try:
            return Checkpoint.parse(raw)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------- writing


class CheckpointWriter:
    """Appends checkpoints to `<log>.checkpoints`, each flushed and fsynced, signed with the key.

    `due(lines)` says whether one is due (lines written since the last, and
    INTERVAL seconds passed); `write(lines, last)` writes one and returns its
    line (without newline), the same bytes to publish to witnesses.
    """

    def __init__(self, path: str | Path, key: Ed25519PrivateKey | None = None, *,
                 interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Imported here, not above: the event log writer may import this module (no cycle).
        from thelca.eventlog import heal_torn_tail

        self.path = Path(path)
        self.key = key
        self.interval = interval
        self._clock = clock
        self.lines: int | None = None  # what the last checkpoint written here covered
        self._written_at = clock()
        self.set_aside = heal_torn_tail(self.path) if self.path.exists() else None
        self._cut_back_to: int | None = None
        self._file = self._open()

    def _open(self) -> BinaryIO:
        created = not self.path.exists()
        file = open(self.path, "ab")  # noqa: SIM115 - held open until close()
        if created:
            _fsync_directory(self.path.parent)
        return file

    def due(self, lines: int) -> bool:
        """True when lines were written since the last checkpoint and the interval is up."""
        return lines != self.lines and self._clock() - self._written_at >= self.interval

    def write(self, lines: int, last: str) -> bytes:
        """Append a checkpoint of the log's first `lines` lines, `last` the hash of line `lines`.

        All or nothing: when writing or fsyncing fails, the file is cut back and the
        error raised (the next checkpoint covers these lines too).
        """
        line = json.dumps(make_record(lines, last, self.key), separators=(",", ":")).encode()
        if self._cut_back_to is not None:  # a failed write left bytes that must go first
            self._cut_back()
        size = self._file.tell()
        try:
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            self._cut_back_to = size
            with contextlib.suppress(OSError):  # the write's own error is the one to raise
                self._cut_back()
            raise
        self.lines = lines
        self._written_at = self._clock()
        return line

    def _cut_back(self) -> None:
        """Drop what a failed write left (written or still buffered); OSError when it cannot."""
        with contextlib.suppress(OSError):  # flushing the buffer may fail again: truncated anyway
            self._file.close()
        with open(self.path, "rb+") as file:
            file.truncate(self._cut_back_to)
            os.fsync(file.fileno())
        self._cut_back_to = None
        self._file = self._open()

    def close(self) -> None:
        self._file.close()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
