"""Atomic writes: all or nothing, and ordinary permissions; staged folders alike."""

from __future__ import annotations

import os

import pytest

from fewstep.core.io import atomic_path, atomic_write_text, staged_dir


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "manifest.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]


def test_a_staged_folder_replaces_the_old_one_or_a_link_only_once_built(tmp_path):
    target, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    (tmp_path / "model.building").mkdir()  # left by a killed build
    (tmp_path / "model.building" / "half.bin").write_text("half")
    with staged_dir(target) as staging:
        assert list(staging.iterdir()) == []
        (staging / "weights.bin").write_text("new")
        assert (target / "stale.bin").exists()
    assert [p.name for p in target.iterdir()] == ["weights.bin"]
    elsewhere.mkdir()
    target_link = tmp_path / "linked"
    target_link.symlink_to(elsewhere, target_is_directory=True)
    with staged_dir(target_link) as staging:
        (staging / "weights.bin").write_text("new")
    assert not target_link.is_symlink() and elsewhere.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "linked", "model"]


def test_a_failing_build_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as staging:
        (staging / "weights.bin").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights.bin").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
