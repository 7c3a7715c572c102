"""swarm.identity: the key file's safety, signing, and libp2p-compatible peer ids."""
import os
import stat

import pytest

from swarm.identity import (IdentityError, NodeIdentity, peer_id_from_public_key,
                            public_key_from_peer_id, verify_signature)


def test_create_then_load_same_identity(tmp_path):
    home = tmp_path / "home"
    first = NodeIdentity.load_or_create(home)
    key_file = home / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    second = NodeIdentity.load_or_create(home)
    assert second.public_key == first.public_key and second.seed == first.seed
    assert second.peer_id == first.peer_id
    assert not [p for p in home.iterdir() if p.name != "node.key"]  # no temp files left


def test_key_created_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        NodeIdentity.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_key_readable_by_others(tmp_path, mode):
    NodeIdentity.load_or_create(tmp_path)
    (tmp_path / "node.key").chmod(mode)
    with pytest.raises(IdentityError, match="readable by others.*chmod 600"):
        NodeIdentity.load_or_create(tmp_path)


@pytest.mark.parametrize("damage", [
    lambda text: text.replace(text.split("\n")[1][:2], "zz", 1),      # not hex
    lambda text: text.replace(text.split("\n")[1][:2], "00" if text.split("\n")[1][:2] != "00"
                              else "11", 1),                           # seed != public key
    lambda text: text[:40],                                            # truncated
    lambda text: "",                                                   # empty
    lambda text: text.replace("loopy-node-key/1", "loopy-node-key/2"),
    lambda text: text + "extra\n",
])
def test_refuses_corrupt_key(tmp_path, damage):
    NodeIdentity.load_or_create(tmp_path)
    key_file = tmp_path / "node.key"
    key_file.write_text(damage(key_file.read_text()))
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        NodeIdentity.load_or_create(tmp_path)


def test_refuses_binary_garbage_and_symlink(tmp_path):
    key_file = tmp_path / "node.key"
    key_file.write_bytes(os.urandom(100))
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        NodeIdentity.load_or_create(tmp_path)
    key_file.unlink()
    other = tmp_path / "elsewhere"
    other.mkdir()
    NodeIdentity.load_or_create(other)
    key_file.symlink_to(other / "node.key")
    with pytest.raises(IdentityError, match="symlink"):
        NodeIdentity.load_or_create(tmp_path)


def test_never_overwrites_an_existing_key(tmp_path):
    first = NodeIdentity.load_or_create(tmp_path)
    before = (tmp_path / "node.key").read_bytes()
    for _ in range(3):
        assert NodeIdentity.load_or_create(tmp_path).peer_id == first.peer_id
    assert (tmp_path / "node.key").read_bytes() == before


def test_sign_and_verify():
    alice, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    sig = alice.sign(b"hello")
    assert len(sig) == 64 and len(alice.public_key) == 32
    assert verify_signature(alice.public_key, b"hello", sig)
    assert not verify_signature(alice.public_key, b"hellO", sig)
    assert not verify_signature(mallory.public_key, b"hello", sig)
    assert not verify_signature(alice.public_key, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature(b"\0" * 32, b"hello", sig)
    assert not verify_signature(alice.public_key[:31], b"hello", sig)
    assert "seed" not in repr(alice) and alice.seed.hex() not in repr(alice)


def test_peer_id_known_vector():
    # ed25519 key of seed 0x00..00; its libp2p peer id, as every libp2p implementation
    # derives it (identity multihash of the protobuf PublicKey, base58btc)
    ident = NodeIdentity(bytes(32))
    assert ident.public_key.hex() == ("3b6a27bcceb6a42d62a3a8d02a6f0d73"
                                      "653215771de243a63ac048a18b59da29")
    assert ident.peer_id == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key


def test_peer_id_matches_libp2p():
    libp2p_id = pytest.importorskip("libp2p.peer.id")
    ed25519 = pytest.importorskip("libp2p.crypto.ed25519")
    for _ in range(20):
        ident = NodeIdentity.generate()
        theirs = libp2p_id.ID.from_pubkey(ed25519.Ed25519PublicKey.from_bytes(ident.public_key))
        assert theirs.to_base58() == ident.peer_id == peer_id_from_public_key(ident.public_key)
        # the libp2p host key built from our seed is the same key
        host_key = ed25519.Ed25519PrivateKey.from_bytes(ident.seed)
        assert host_key.get_public_key().to_bytes() == ident.public_key


@pytest.mark.parametrize("bad", ["", "12D3KooW", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
                                 "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT0",
                                 "1" * 52, None, b"12D3"])
def test_public_key_from_bad_peer_id(bad):
    with pytest.raises(ValueError):
        public_key_from_peer_id(bad)


def test_seed_must_be_32_bytes():
    with pytest.raises(IdentityError):
        NodeIdentity(b"short")
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"\0" * 31)


def test_concurrent_creation_keeps_the_first_key(tmp_path, monkeypatch):
    """Another process created the key between our check and our link: we use theirs."""
    theirs = NodeIdentity.load_or_create(tmp_path)
    import swarm.identity as identity_module
    monkeypatch.setattr(identity_module.os.path, "lexists", lambda path: False)
    ours = NodeIdentity.load_or_create(tmp_path)
    assert ours.peer_id == theirs.peer_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]
