"""Result files get the permissions a plain open() would give, although written atomically."""

import os
import stat

import pytest

from atomic_io import atomic_write_json, atomic_write_text, current_umask


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    atomic_write_json(tmp_path / "out" / "result.json", {"a": 1})
    assert mode(tmp_path / "out" / "result.json") == expected
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["result.json"]  # no temp file left


def test_a_rewritten_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "log.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_umask_is_read_and_kept_without_proc(monkeypatch, umask):
    import atomic_io

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    umask(0o027)
    monkeypatch.setattr(atomic_io, "open", no_proc, raising=False)
    assert current_umask() == 0o027 and current_umask() == 0o027
