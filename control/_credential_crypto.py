"""Sealing credentials: the AES-GCM master key, the key file it lives in, and the binding of
each ciphertext to its row.

The master key comes from `COMPTROLLER_MASTER_KEY` (URL-safe base64 of 32 bytes) or from a
key file created with mode 0600 on first use. Each ciphertext records the id of the key that
sealed it, so a rotation can re-encrypt everything under a new key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from comptroller._private import private_dir, write_private
from comptroller.control._profile_errors import CredentialDecryptError, MasterKeyError
from comptroller.control._store_rows import _scope

ENV_MASTER_KEY = "COMPTROLLER_MASTER_KEY"
"""Environment variable holding the master key (URL-safe base64 of 32 random bytes)."""


def generate_master_key() -> str:
    """A fresh master key, as the text `COMPTROLLER_MASTER_KEY` or the key file holds."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


class MasterKey:
    """A 256-bit AES-GCM key and its id. The key bytes never show in a repr."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, text: str, *, origin: str) -> None:
        try:
            raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise MasterKeyError(
                f"the master key from {origin} is not URL-safe base64 of 32 bytes; "
                'create one with `python -c "import base64,os;'
                'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
            )
        # The id is a hash prefix: it names the key without revealing anything usable.
        self.key_id = hashlib.sha256(b"comptroller-master-key:" + raw).hexdigest()[:16]
        self._aead = AESGCM(raw)

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of `plaintext` bound to `aad`."""
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext.

        Raises:
            cryptography.exceptions.InvalidTag: Wrong key, or the row was tampered with.
        """
        return self._aead.decrypt(nonce, ciphertext, aad)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"


class MasterKeySource:
    """Where the master key lives: the environment, else a 0600 file created on first use.

    Args:
        key_file: The key file (`settings.master_key_file`).
        environ: The environment to read `COMPTROLLER_MASTER_KEY` from (default: os.environ).
    """

    def __init__(self, key_file: Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.key_file = key_file
        self._environ = environ if environ is not None else os.environ
        self._loaded: MasterKey | None = None

    @property
    def from_environment(self) -> bool:
        """Whether `COMPTROLLER_MASTER_KEY` supplies the key."""
        return bool(self._environ.get(ENV_MASTER_KEY))

    def load(self, *, create: bool = True) -> MasterKey:
        """The master key in force (created in the key file on first use when `create`).

        Raises:
            MasterKeyError: Malformed key, unreadable file, or a file others may read.
        """
        if self._loaded is not None:
            return self._loaded
        text = self._environ.get(ENV_MASTER_KEY)
        if text:
            key = MasterKey(text, origin=f"environment variable {ENV_MASTER_KEY}")
        else:
            key = MasterKey(self._read_or_create(create), origin=f"key file {self.key_file}")
        self._loaded = key
        return key

    def pending(self) -> MasterKey | None:
        """A key left in `<key file>.new` by an interrupted rotation, if any."""
        path = self._pending_path()
        if not path.exists():
            return None
        return MasterKey(path.read_text(), origin=f"key file {path}")

    def keyring(self, key: MasterKey) -> dict[str, MasterKey]:
        """`key`, and the key an interrupted rotation left pending: what may open a row."""
        keyring = {key.key_id: key}
        pending = self.pending()
        if pending is not None:
            keyring[pending.key_id] = pending
        return keyring

    def install(self, text: str) -> None:
        """Make `text` the key of the key file (stage it in `.new`, then rename)."""
        staged = self._pending_path()
        _write_private(staged, text, replace=True)
        os.replace(staged, self.key_file)
        self._loaded = None

    def stage(self, text: str) -> None:
        """Keep the next key in `<key file>.new` while a rotation re-encrypts."""
        _write_private(self._pending_path(), text, replace=True)

    def _pending_path(self) -> Path:
        return self.key_file.with_name(self.key_file.name + ".new")

    def _read_or_create(self, create: bool) -> str:
        path = self.key_file
        if not path.exists():
            if not create:
                raise MasterKeyError(
                    f"no master key: set {ENV_MASTER_KEY} or restore the key file {path}"
                )
            # Another process may have created it first: then use theirs.
            with contextlib.suppress(FileExistsError):
                _write_private(path, generate_master_key(), replace=False)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                # Refused, not tightened: whoever could read it may hold the key already.
                raise MasterKeyError(
                    f"key file {path} has mode {mode:o}: others may read it; run "
                    f"`chmod 600 {path}`, and rotate the master key if others could have "
                    "read it (`comptroller credentials rotate-master-key`)"
                )
            return path.read_text()
        except OSError as exc:
            raise MasterKeyError(
                f"key file {path} cannot be read ({exc.strerror}); fix its permissions "
                f"or set {ENV_MASTER_KEY}"
            ) from None


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    if not path.parent.exists():
        private_dir(path.parent)  # made for the key: 0700 (an existing one is not ours)
    write_private(path, text.encode("ascii"), exclusive=not replace, sync=True)


def _aad(ref: str, scope_kind: str, scope_id: str, provider: str, kind: str) -> bytes:
    # Binding the ciphertext to its row: a sealed key copied onto another scope or provider
    # does not open there.
    return "\x1f".join(
        ("comptroller-credential-v1", ref, scope_kind, scope_id, provider, kind)
    ).encode()


def _unseal(keyring: Mapping[str, MasterKey], row: Mapping[Any, Any], aad: bytes) -> bytes:
    """The plaintext of a credential row, under whichever key of `keyring` sealed it."""
    key = keyring.get(row["key_id"])
    where = f"credential {row['ref']} (provider {row['provider']!r} at {_scope(row['scope_kind'], row['scope_id'], None)})"
    if key is None:
        raise CredentialDecryptError(
            f"{where} is sealed under master key id {row['key_id']}, but the key in force "
            f"has id {', '.join(keyring)}; restore that master key, or set the "
            "credential again"
        )
    try:
        return key.open(bytes(row["nonce"]), bytes(row["ciphertext"]), aad)
    except InvalidTag:
        raise CredentialDecryptError(
            f"{where} does not open under master key id {key.key_id}: the row was altered; "
            "set the credential again"
        ) from None
