import pytest

from hybrids.datasets.atomic import atomic_write_path, atomic_write_text


def test_success_renames_into_place(tmp_path):
    dest = tmp_path / "sub" / "out.nii.gz"
    with atomic_write_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.endswith(".nii.gz") and tmp != dest
        tmp.write_bytes(b"data")
        assert not dest.exists()
    assert dest.read_bytes() == b"data"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.nii.gz"]


def test_failure_leaves_no_partial_file_and_keeps_old_content(tmp_path):
    dest = tmp_path / "song.wav"
    with pytest.raises(RuntimeError), atomic_write_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(dest, "old")
    with pytest.raises(KeyboardInterrupt), atomic_write_path(dest) as tmp:
        tmp.write_text("new but incomplete")
        raise KeyboardInterrupt
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["song.wav"]
