"""megatron_mio.atomic: an output appears whole or not at all."""

import pytest

from megatron_mio.atomic import atomic_directory, atomic_file, write_text


def test_file_replaced_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out" / "report.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    write_text(target, "new", durable=True)
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.txt"]  # no temporary left


def test_directory_replaced_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "b").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_directory(target, overwrite=False):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "plain.txt", "x")
        with atomic_directory(tmp_path / "dir") as staging:
            (staging / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o755
