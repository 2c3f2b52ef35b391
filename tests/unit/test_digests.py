"""Checkpoint file checksums (pure): known answers, chunking, and the manifest's one-checksum rule."""

from __future__ import annotations

import hashlib
import json

import pytest

from spot_workflows.errors import ConfigError
from spot_workflows.runtime.store import digests
from spot_workflows.runtime.store.manifest import Manifest, ManifestFile


def test_known_answers():
    # CRC-32C (Castagnoli) check value from RFC 3720 / the CRC catalogue
    assert digests.of(b"123456789", "crc32c") == "e3069283"
    assert digests.of(b"", "crc32c") == "00000000"
    assert digests.of(b"abc", "sha256") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("algorithm", digests.ALGORITHMS)
def test_pieces_give_the_same_checksum_as_the_whole(algorithm):
    data = bytes(range(256)) * 1000 + b"tail"
    whole = digests.of(data, algorithm)
    assert digests.of(memoryview(data), algorithm, chunk=7) == whole
    hasher = digests.new(algorithm)
    for start in range(0, len(data), 4096):
        hasher.update(data[start : start + 4096])
    assert hasher.hexdigest() == whole
    flipped = bytearray(data)
    flipped[12345] ^= 0x01
    assert digests.of(flipped, algorithm) != whole


def test_the_fast_default_is_crc32c_where_its_c_extension_is_installed():
    assert digests.fastest() == ("crc32c" if digests.crc32c_is_fast() else "sha256")
    assert digests.crc32c_is_fast()  # a dependency of the package, with wheels for CI's platform


def test_an_unknown_algorithm_says_which_exist():
    with pytest.raises(ConfigError, match="sha256, crc32c.*'md5'"):
        digests.new("md5")


def test_a_manifest_file_names_exactly_one_checksum():
    f = ManifestFile.of("a.bin", 3, "e3069283", "crc32c")
    assert (f.algorithm, f.digest, f.sha256) == ("crc32c", "e3069283", None)
    assert f.matches(3, "e3069283") and not f.matches(4, "e3069283")
    legacy = ManifestFile("b.bin", 1, "ab" * 32)  # positional sha256, as older manifests hold
    assert legacy.algorithm == "sha256"
    m = Manifest(step=1, created_at=0.0, files=[f, legacy])
    body = m.model_dump_json(exclude_none=True)
    assert json.loads(body)["files"][0] == {"name": "a.bin", "size": 3, "crc32c": "e3069283"}
    assert Manifest.model_validate_json(body) == m
    for bad in (
        {"name": "c", "size": 1},
        {"name": "c", "size": 1, "sha256": "x", "crc32c": "y"},
        {"name": "c", "size": -1, "crc32c": "y"},
    ):
        with pytest.raises(ValueError, match="one of sha256/crc32c"):
            Manifest.model_validate({"step": 1, "created_at": 0, "files": [bad]})
