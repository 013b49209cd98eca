"""Tests for ``sam3_lora_plugin.models.bpe.get_bpe_path`` (locating SAM3's BPE vocabulary)."""

from __future__ import annotations

import hashlib
import os

import pytest

from sam3_lora_plugin.models import bpe
from sam3_lora_plugin.models.bpe import BPE_FILENAME, BpeNotFoundError, get_bpe_path

SAM3_BPE_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"


def test_default_path_is_sam3_vocabulary():
    """With no argument the resolved file exists, has the right name and SAM3's md5."""
    path = get_bpe_path()
    assert os.path.isfile(path)
    assert os.path.basename(path) == BPE_FILENAME
    with open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == SAM3_BPE_MD5


def test_explicit_existing_path_returned_as_is(tmp_path):
    """An explicit existing path is returned unchanged (not normalised, not checked for content)."""
    path = tmp_path / "sub" / ".." / "my_vocab.txt.gz"
    (tmp_path / "sub").mkdir()
    path.write_bytes(b"not really a vocabulary")
    assert get_bpe_path(str(path)) == str(path)


def test_explicit_missing_path_raises(tmp_path):
    """A missing explicit path raises BpeNotFoundError that names the path and the fix."""
    missing = str(tmp_path / "nope" / BPE_FILENAME)
    with pytest.raises(BpeNotFoundError) as info:
        get_bpe_path(missing)
    msg = str(info.value)
    assert missing in msg
    assert "bpe_path: null" in msg
    # It is a FileNotFoundError, so generic handlers still catch it.
    assert isinstance(info.value, FileNotFoundError)


def test_no_candidate_names_open_clip_fix(tmp_path, monkeypatch):
    """When no candidate file exists the error lists where it looked and names open_clip_torch."""
    fake = [str(tmp_path / "a" / BPE_FILENAME), str(tmp_path / "b" / BPE_FILENAME)]
    monkeypatch.setattr(bpe, "_candidates", lambda: fake)
    with pytest.raises(BpeNotFoundError) as info:
        get_bpe_path()
    msg = str(info.value)
    assert "pip install open_clip_torch" in msg
    assert BPE_FILENAME in msg
    for path in fake:
        assert path in msg


def test_no_candidate_at_all(monkeypatch):
    """With an empty candidate list (neither sam3 nor open_clip found) the error still explains the fix."""
    monkeypatch.setattr(bpe, "_candidates", lambda: [])
    with pytest.raises(BpeNotFoundError, match="open_clip_torch"):
        get_bpe_path()


def test_first_existing_candidate_wins(tmp_path, monkeypatch):
    """Candidates are tried in order; the first existing file is returned."""
    first, second = tmp_path / "first.gz", tmp_path / "second.gz"
    second.write_bytes(b"x")
    monkeypatch.setattr(bpe, "_candidates", lambda: [str(tmp_path / "missing.gz"), str(second), str(first)])
    assert get_bpe_path() == str(second)
    first.write_bytes(b"x")
    monkeypatch.setattr(bpe, "_candidates", lambda: [str(first), str(second)])
    assert get_bpe_path() == str(first)
