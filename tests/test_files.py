"""prefopt.core.files: whole-file writes are atomic, strict JSON, and leave nothing behind on failure."""

import hashlib
import json
import os

import pytest

from prefopt.core import files


def test_write_json_is_strict_and_replaces(tmp_path):
    p = tmp_path / "a.json"
    files.write_json(str(p), {"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads(p.read_text()) == {"x": None, "y": [1.0, None]}
    files.write_json(str(p), {"z": 1}, indent=1)
    assert json.loads(p.read_text()) == {"z": 1} and p.read_text().endswith("\n")
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    p = tmp_path / "a.txt"
    files.write_text(str(p), "old")
    with pytest.raises(RuntimeError):
        with files.atomic_open(str(p)) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_jsonl_bytes_and_sha256(tmp_path):
    p = tmp_path / "m.jsonl"
    files.write_jsonl(str(p), [{"a": 1}, {"a": float("nan")}])
    assert [json.loads(line) for line in p.read_text().splitlines()] == [{"a": 1}, {"a": None}]
    b = tmp_path / "b.bin"
    files.write_bytes(str(b), b"\x00\x01")
    assert files.sha256_file(str(b)) == hashlib.sha256(b"\x00\x01").hexdigest()
    assert files.sha256_text("é") == hashlib.sha256("é".encode()).hexdigest()
    with pytest.raises(ValueError, match="accepted are"):
        with files.atomic_open(str(b), "a"):
            pass
