"""A node's ed25519 identity: the key file in its home, signing, and its libp2p peer id.

One key serves both roles, so a record's author *is* the gossip peer that sent it:
the record `author` is the raw 32-byte ed25519 public key and the peer id is libp2p's
encoding of the same key (identity multihash of the protobuf `PublicKey`, base58btc),
computed here in pure Python so that relaying nodes need not import libp2p.

The key file `<home>/node.key` holds the 32-byte seed and the public key, both in hex,
under a version line. It is created with mode 0600 under a temporary name and linked
into place (never overwriting a key another process made first). Loading refuses a key
file that group or others can read, that another user owns, that is a symlink, or whose
seed does not give the stored public key (a corrupt file), with an `IdentityError`
that says what to do.
"""
from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing

KEY_FILE = "node.key"
KEY_HEADER = "loopy-node-key/1"
SEED_LEN = 32
PUBLIC_KEY_LEN = 32

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
# libp2p crypto.proto: PublicKey { required KeyType Type = 1; required bytes Data = 2; }
# with KeyType Ed25519 = 1: field 1 varint (0x08 0x01), field 2 bytes of length 32.
_ED25519_PROTOBUF_PREFIX = bytes([0x08, 0x01, 0x12, PUBLIC_KEY_LEN])
_IDENTITY_MULTIHASH = 0x00


class IdentityError(Exception):
    """The node key cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------------------
# Peer ids


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p peer id (base58btc, `12D3KooW...`) of a raw ed25519 public key."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError("an ed25519 public key is 32 bytes")
    return _peer_id(public_key)


@functools.lru_cache(maxsize=4096)  # listings name the same few authors many times
def _peer_id(public_key: bytes) -> str:
    encoded = _ED25519_PROTOBUF_PREFIX + public_key
    multihash = bytes([_IDENTITY_MULTIHASH, len(encoded)]) + encoded
    return _b58encode(multihash)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw ed25519 public key inside an ed25519 peer id; ValueError for any other id."""
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise ValueError("not an ed25519 peer id")
    raw = _b58decode(peer_id)
    prefix = bytes([_IDENTITY_MULTIHASH, len(_ED25519_PROTOBUF_PREFIX) + PUBLIC_KEY_LEN])
    prefix += _ED25519_PROTOBUF_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_LEN or not raw.startswith(prefix):
        raise ValueError("not an ed25519 peer id")
    return raw[len(prefix):]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid ed25519 signature of `message` by `public_key`."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
        return True
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------
# The node key


class NodeIdentity:
    """An ed25519 key pair.

    `public_key` (32 raw bytes) is what records name as their author, `peer_id` the
    libp2p peer id of the same key. `seed` is the secret: it also makes the libp2p host
    key (`libp2p.crypto.ed25519.Ed25519PrivateKey.from_bytes(seed)`).
    """

    __slots__ = ("seed", "public_key", "peer_id", "_signing_key")

    def __init__(self, seed: bytes):
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise IdentityError("an ed25519 seed is 32 bytes")
        self.seed = seed
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._signing_key.verify_key)
        self.peer_id = peer_id_from_public_key(self.public_key)

    def __repr__(self) -> str:  # never print the seed
        return f"NodeIdentity(peer_id={self.peer_id!r})"

    @classmethod
    def generate(cls) -> "NodeIdentity":
        """A fresh key that lives in memory only (tests, simulations)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    def sign(self, message: bytes) -> bytes:
        """64-byte ed25519 signature of `message`."""
        return self._signing_key.sign(message).signature

    @classmethod
    def load_or_create(cls, home: str | os.PathLike) -> "NodeIdentity":
        """Load `<home>/node.key`, creating home (0700) and a new key (0600) if absent."""
        home = Path(home).expanduser()
        path = home / KEY_FILE
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise IdentityError(f"cannot create node home {home}: {e.strerror}") from e
        if not os.path.lexists(path):
            identity = cls.generate()
            if _write_new_key(path, identity):
                return identity
            # another process created the key first: use theirs
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> "NodeIdentity":
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise IdentityError(f"cannot open node key {path}: {e.strerror} "
                                f"(it must be a regular file, not a symlink)") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"node key {path} is not a regular file")
            if os.name == "posix":
                if st.st_mode & 0o077:
                    raise IdentityError(
                        f"node key {path} is readable by others (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` if it "
                        f"was never exposed, otherwise delete it to make a new identity")
                if st.st_uid != os.getuid():
                    raise IdentityError(f"node key {path} belongs to another user "
                                        f"(uid {st.st_uid})")
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return cls(_parse_key_file(data, path))


def _parse_key_file(data: bytes, path: Path) -> bytes:
    corrupt = IdentityError(f"node key {path} is corrupt; restore it from a backup or "
                            f"delete it to make a new identity")
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise corrupt from None
    if len(lines) != 4 or lines[0] != KEY_HEADER or lines[3] != "":
        raise corrupt
    try:
        seed, public_key = bytes.fromhex(lines[1]), bytes.fromhex(lines[2])
    except ValueError:
        raise corrupt from None
    if len(seed) != SEED_LEN or len(public_key) != PUBLIC_KEY_LEN:
        raise corrupt
    if bytes(nacl.signing.SigningKey(seed).verify_key) != public_key:
        raise corrupt
    return seed


def _write_new_key(path: Path, identity: NodeIdentity) -> bool:
    """Write the key to a 0600 temporary file and link it into place.

    Returns False if a key appeared at `path` meanwhile (left untouched).
    """
    text = f"{KEY_HEADER}\n{identity.seed.hex()}\n{identity.public_key.hex()}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
    except OSError as e:
        raise IdentityError(f"cannot create node key in {path.parent}: {e.strerror}") from e
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing key
        except FileExistsError:
            return False
        except OSError as e:
            raise IdentityError(f"cannot create node key {path}: {e.strerror}") from e
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
