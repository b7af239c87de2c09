"""The lean tar reader against the standard library's writer, in every format it produces."""

import io
import random
import tarfile

import pytest

from training.data.tarstream import TarFormatError, _byte_sum, iter_members, parse_pax


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [
    ("000001.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("000001.cls", b"7"),
    ("somedir", None),
    ("empty.txt", b""),
    ("exactly/one/block.bin", b"x" * 512),
    ("d/" * 60 + "long-name.jpg", b"deep"),      # > 100 chars: prefix, GNU L or pax path
    ("unicodé/名前.cls", b"3"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_what_tarfile_writes(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else MEMBERS[:-1]  # ustar: ASCII only
    got = list(iter_members(make_tar(members, fmt)))
    assert got == [(name, data) for name, data in members if data is not None]


def test_pax_records():
    assert parse_pax(b"20 path=abc/def.jpg\n11 size=42\n") == {"path": "abc/def.jpg", "size": "42"}
    with pytest.raises(TarFormatError):
        parse_pax(b"xx path=a\n")


def test_truncation_is_an_eof_error_after_the_intact_members():
    data = make_tar(MEMBERS[:2] + [("big.bin", b"z" * 5000)])
    # 000001.jpg: header + 2 blocks; 000001.cls: header + 1 block; big.bin's header, then 1000
    # of its 5000 bytes.
    stream = iter_members(data[:512 * 6 + 1000])
    assert [name for name, _ in (next(stream), next(stream))] == ["000001.jpg", "000001.cls"]
    with pytest.raises(EOFError, match="truncated"):
        next(stream)
    with pytest.raises(EOFError, match="header"):
        list(iter_members(data[:512 * 3 + 100]))  # inside the second header


def test_a_corrupt_header_is_a_format_error():
    data = bytearray(make_tar(MEMBERS[:2]))
    data[10] ^= 0xFF  # inside the first header's name
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(data))


def test_a_stream_cut_between_members_just_ends():
    one = make_tar(MEMBERS[:1])
    size = 512 + 1024  # header + two blocks of data: no end-of-archive blocks
    assert [n for n, _ in iter_members(one[:size])] == ["000001.jpg"]


def test_views_instead_of_copies():
    tar = make_tar(MEMBERS)
    views = list(iter_members(tar, copy=False))
    assert [(name, bytes(v)) for name, v in views] == [m for m in MEMBERS if m[1] is not None]
    assert all(isinstance(v, memoryview) and v.obj is tar and v.readonly for _, v in views)


def test_the_header_checksum_sum_is_exact():
    rng = random.Random(0)
    blocks = [bytes(512), b"\xff" * 512, bytes(range(256)) * 2]
    blocks += [rng.randbytes(512) for _ in range(500)]
    assert [_byte_sum(b) for b in blocks] == [sum(b) for b in blocks]
