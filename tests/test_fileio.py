"""proxytasks.fileio: atomic writes (a reader never sees half a file) and refusing to replace
a user's outputs without --overwrite."""
from __future__ import annotations

import gzip
import os
import stat

import pytest

from proxytasks.errors import ProxytasksError
from proxytasks.fileio import atomic_write, refuse_overwrite


def leftovers(folder) -> list[str]:
    """Temporary files atomic_write may leave beside its target (``.NAME.*.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_text_and_bytes_reach_the_file_whole(tmp_path):
    with atomic_write(tmp_path / "sub" / "a.txt") as fh:  # missing folders are made
        fh.write("héllo\nwörld\n")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == "héllo\nwörld\n".encode("utf-8")
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(bytes(range(256)))
    assert (tmp_path / "b.bin").read_bytes() == bytes(range(256))
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []


def test_nothing_is_visible_until_the_block_ends(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with atomic_write(target) as fh:
        fh.write("new\n")
        fh.flush()
        assert target.read_text() == "old\n"  # the reader still sees the whole old file
        assert len(leftovers(tmp_path)) == 1
    assert target.read_text() == "new\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_keeps_the_old_content_and_removes_the_temporary(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("kept\n")
    with pytest.raises(error):
        with atomic_write(target) as fh:
            fh.write("half of a new fi")
            raise error("stopped mid-write")
    assert target.read_text() == "kept\n"
    assert leftovers(tmp_path) == []
    with pytest.raises(error):  # and a target that did not exist stays absent
        with atomic_write(tmp_path / "new.txt", "wb") as fh:
            fh.write(b"x")
            raise error("stopped")
    assert not (tmp_path / "new.txt").exists() and leftovers(tmp_path) == []


def test_gzip_follows_the_suffix_and_is_reproducible(tmp_path):
    for name in ("a.jsonl.gz", "b.jsonl.gz"):
        with atomic_write(tmp_path / name) as fh:
            fh.write('{"id": "f0"}\n')
    raw = (tmp_path / "a.jsonl.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == b'{"id": "f0"}\n'
    assert raw == (tmp_path / "b.jsonl.gz").read_bytes()  # mtime=0: same bytes every time
    with atomic_write(tmp_path / "plain.gz", gz=False) as fh:
        fh.write("not compressed")
    assert (tmp_path / "plain.gz").read_text() == "not compressed"
    with atomic_write(tmp_path / "packed.bin", "wb", gz=True) as fh:
        fh.write(b"\x00\x01")
    assert gzip.decompress((tmp_path / "packed.bin").read_bytes()) == b"\x00\x01"


def test_permissions_follow_the_umask_like_open(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == 0o640 == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode)  # not mkstemp's 0600


def test_refuse_overwrite_names_the_file_what_it_holds_and_the_way_out(tmp_path):
    target = tmp_path / "sheet.csv"
    refuse_overwrite(target, "a suggestion sheet")  # absent: nothing to protect
    target.write_text("id,name\nf1,ann\n")
    with pytest.raises(ProxytasksError) as err:
        refuse_overwrite(target, "a suggestion sheet with 1 answer", how="write to another file with -o.")
    text = str(err.value)
    assert str(target) in text and "a suggestion sheet with 1 answer" in text
    assert "write to another file with -o; or pass --overwrite" in text
    assert err.value.exit_code == 2
    refuse_overwrite(target, "a sheet", overwrite=True)  # the user asked for it
    refuse_overwrite(target, "a sheet", holds=False)  # exists but holds nothing worth keeping
    with pytest.raises(ProxytasksError, match="--overwrite"):
        refuse_overwrite(tmp_path / "absent", "a finished run", holds=True)
    assert target.read_text() == "id,name\nf1,ann\n"  # never touched
