import os
import stat
import subprocess
import sys

import pytest

from hybrids.datasets.atomic import (
    OutputError,
    atomic_write_folder,
    atomic_write_path,
    atomic_write_text,
    check_output_folder,
    make_output_folder,
)


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


def test_finished_files_get_the_mode_open_would_give(tmp_path):
    # mkstemp makes owner-only files; a plain open(..., "w") gives 0o666 less the umask.
    old_mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
        os.umask(0o002)
        with open(tmp_path / "c.txt", "w") as handle:  # the reference: what open() gives
            handle.write("x")
        atomic_write_text(tmp_path / "d.txt", "x")
        assert (tmp_path / "d.txt").stat().st_mode == (tmp_path / "c.txt").stat().st_mode
    finally:
        os.umask(old_mask)
    # Replacing a file keeps that file's mode, as writing into it would.
    (tmp_path / "a.txt").chmod(0o640)
    atomic_write_text(tmp_path / "a.txt", "y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_unwritable_destinations_raise_one_line_output_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file/out\.wav: cannot write"):
        atomic_write_text(tmp_path / "file" / "out.wav", "x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(OutputError, match="is a file"):
        make_output_folder(tmp_path / "file" / "sub")
    assert make_output_folder(tmp_path / "new" / "sub").is_dir()
    check_output_folder(tmp_path / "not" / "yet")  # creatable: no error
    assert not (tmp_path / "not").exists()


def test_read_only_folder_as_an_unprivileged_user(unprivileged):
    prefix, folder = unprivileged
    read_only = folder / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    script = (
        "import sys\n"
        "from hybrids.datasets.atomic import OutputError, atomic_write_text, check_output_folder\n"
        "try:\n"
        f"    check_output_folder({str(read_only / 'sub')!r})\n"
        "except OutputError as e:\n"
        "    print('check:', e)\n"
        "try:\n"
        f"    atomic_write_text({str(read_only / 'x.txt')!r}, 'x')\n"
        "except OutputError as e:\n"
        "    print('write:', e)\n"
    )
    result = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"check: {read_only / 'sub'}: cannot write there ({read_only} is not writable)" in result.stdout
    assert f"write: {read_only / 'x.txt'}: cannot write (Permission denied)" in result.stdout
    assert list(read_only.iterdir()) == []


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "best"
    with pytest.raises(KeyboardInterrupt), atomic_write_folder(dest) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C while writing the first checkpoint: no empty best/
    assert list(tmp_path.iterdir()) == []
    with atomic_write_folder(dest) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    old_mask = os.umask(0o022)
    os.umask(old_mask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~old_mask
    with pytest.raises(RuntimeError), atomic_write_folder(dest) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (dest / "a").read_text() == "1" and (dest / "b").read_text() == "1"
    with atomic_write_folder(dest) as tmp:
        (tmp / "a").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["a"] and (dest / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
