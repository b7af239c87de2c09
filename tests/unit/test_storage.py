"""Reading whole shards: local files are mapped, not copied."""

import mmap

import pytest

from training.data.storage import StorageError, read_buffer


def test_a_local_file_is_mapped_read_only(tmp_path):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(b"0123456789" * 1000)
    buffer = read_buffer(str(path))
    assert isinstance(buffer, mmap.mmap) and buffer[:] == path.read_bytes()
    view = memoryview(buffer)
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    # The shard builder replaces a shard by renaming a new file over it: the mapping keeps the
    # old contents, so a loader mid-shard reads what it started with.
    replacement = tmp_path / "new.tar"
    replacement.write_bytes(b"x" * 5)
    replacement.replace(path)
    assert bytes(view[:10]) == b"0123456789"


def test_an_empty_file_is_empty_bytes_and_a_missing_one_a_clear_error(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    assert read_buffer(str(tmp_path / "empty.tar")) == b""
    with pytest.raises(StorageError, match="cannot read .*missing.tar"):
        read_buffer(str(tmp_path / "missing.tar"))
