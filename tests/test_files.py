"""Atomic writes: a reader sees the old file or the whole new one, never half, and failures leave nothing."""

import errno
import json
import os

import pytest

from edgekd import files
from edgekd.errors import EdgeKDError


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    files.write_json(p, {"v": 1})
    files.write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_is_strict_a_nan_or_infinity_is_refused_and_nothing_written(tmp_path, bad):
    p = tmp_path / "manifest.json"
    files.write_json(p, {"kl": 0.5})
    with pytest.raises(ValueError, match=r"manifest.json: Out of range float values are not JSON compliant"):
        files.write_json(p, {"kl": None, "sensitivity": [{"kl_gain": bad}]})
    assert json.loads(p.read_text()) == {"kl": 0.5}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["manifest.json"]


def test_finite_or_none_is_how_a_writer_records_a_figure_strict_json_cannot_hold():
    assert [files.finite_or_none(x) for x in (0.25, 3, None, float("nan"), float("inf"), -float("inf"))] == \
        [0.25, 3.0, None, None, None, None]


def test_disk_full_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "summary.json"
    files.write_json(p, {"good": True})
    real_fsync = os.fsync

    def full(fd):  # the write "succeeds" into the page cache; flushing to disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EdgeKDError, match="No space left on device"):
        files.write_json(p, {"good": False})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(p.read_text()) == {"good": True}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["summary.json"]


def test_unwritable_folder_is_a_clean_error(tmp_path):
    with pytest.raises(EdgeKDError, match="cannot write"):
        files.write_json(tmp_path / "missing" / "x.json", {})


def test_atomic_dir_commits_only_on_success(tmp_path):
    final = tmp_path / "bundle"
    with files.atomic_dir(final) as d:
        (d / "f.txt").write_text("ok")
    assert (final / "f.txt").read_text() == "ok"
    with pytest.raises(RuntimeError):
        with files.atomic_dir(tmp_path / "broken") as d:
            (d / "half.txt").write_text("x")
            raise RuntimeError("export failed half way")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle"], "no partial folder may remain"
    with pytest.raises(EdgeKDError, match="already exists"):
        with files.atomic_dir(final):
            pass
    with files.atomic_dir(final, overwrite=True) as d:
        (d / "g.txt").write_text("new")
    assert sorted(x.name for x in final.iterdir()) == ["g.txt"]


def test_sha256(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert files.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
