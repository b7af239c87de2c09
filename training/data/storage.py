"""The one place that talks to object storage: URLs that are either local paths or s3://.

boto3 reads its endpoint from ``AWS_ENDPOINT_URL`` and credentials from the standard variables,
so the same code reaches AWS S3, MinIO or the embedded moto server. The client is created lazily
(once per process, shared by its threads) because DataLoader workers fork after import.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import random
import threading
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

_clients: dict = {}
_client_lock = threading.Lock()


def _forget_clients() -> None:
    # A forked child (a DataLoader worker) must not share its parent's connections, nor a lock
    # another parent thread held at the fork.
    global _client_lock
    _client_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients)


class StorageError(RuntimeError):
    """A missing bucket, object or folder, or storage that cannot be reached: one clear message."""


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def s3_client():
    """The process's boto3 S3 client, with retries and backoff.

    One for all threads (boto3's clients are thread-safe; making one costs 0.2-0.4 s of CPU,
    which a loader's prefetch thread, new every epoch, paid each time). Keyed by endpoint
    (tests point it at a proxy) and read timeout; a forked process starts with none.
    """
    read_timeout = float(os.environ.get("DEPTHLAB_S3_READ_TIMEOUT", "60"))
    key = (os.environ.get("AWS_ENDPOINT_URL"), read_timeout)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": 8, "mode": "standard"},
                connect_timeout=10,
                # A stalled answer is abandoned after this long and retried (a slow replica, a
                # stuck connection); DEPTHLAB_S3_READ_TIMEOUT tunes it for slow object stores.
                read_timeout=read_timeout,
                # Room for the loader's prefetch thread, the shard builder's uploads and the
                # caller's own requests at once.
                max_pool_connections=32,
            )
            client = boto3.session.Session().client(
                "s3", config=cfg, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
            )
            _clients[key] = client
        return client


_PERMANENT = ("NoSuchBucket", "NoSuchKey", "404", "NotFound", "AccessDenied",
              "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _explain(url: str, exc: Exception) -> StorageError:
    code = _error_code(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    if code in ("NoSuchBucket",):
        return StorageError(f"bucket of {url} does not exist (endpoint {endpoint})")
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(f"{url} does not exist (endpoint {endpoint})")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return StorageError(f"access to {url} denied ({code}): check the AWS credentials")
    return StorageError(f"cannot read {url} from {endpoint}: {type(exc).__name__}: {exc}")


def _read_object(url: str, *, max_attempts: int = 8, base_delay: float = 0.2) -> bytes:
    """The whole of one S3 object, read again from the start when its body breaks half-way.

    botocore retries failed requests, but not a body that breaks after the answer began (a
    reset, a timeout, a server that closes early). Such a read is noticed (an error, or fewer
    bytes than the object holds) and the object is asked for again, with exponential backoff
    and jitter. Shards are read whole, and a ranged resume from the byte where it broke
    was measured no faster (`bench/results/parts-removed.md`): this is the simpler code.
    """
    bucket, key = split_s3(url)
    for attempt in range(1, max_attempts + 1):
        try:
            response = s3_client().get_object(Bucket=bucket, Key=key)
            data = response["Body"].read()
            if len(data) != response["ContentLength"]:
                raise ConnectionError(f"got {len(data)} of {response['ContentLength']} bytes")
            return data
        except Exception as exc:
            if _error_code(exc) in _PERMANENT:
                raise _explain(url, exc) from None
            if attempt == max_attempts:
                raise StorageError(f"reading {url} failed {attempt} times: "
                                   f"{type(exc).__name__}: {exc}") from None
            time.sleep(min(10.0, base_delay * 2 ** attempt) * (0.5 + random.random()))


def open_stream(url: str) -> BinaryIO:
    """Open a local file or an s3:// object for sequential reading (an object is read whole
    first: see ``_read_object``)."""
    return io.BytesIO(read_bytes(url)) if is_s3(url) else _open_local(url)


def _open_local(url: str) -> BinaryIO:
    try:
        return open(url, "rb")
    except OSError as exc:
        raise StorageError(f"cannot open {url}: {exc.strerror}") from None


def read_bytes(url: str) -> bytes:
    if not is_s3(url):
        with _open_local(url) as f:
            return f.read()
    return _read_object(url)


def read_buffer(url: str) -> bytes | mmap.mmap:
    """The whole of a file or object as a read-only buffer, for a reader that walks it in memory.

    An S3 object is downloaded into bytes. A local file is mapped instead: no copy into fresh
    memory for the kernel to zero first, and the pages stay the page cache's, shared and
    reclaimable. ``MAP_POPULATE`` reads the file in now, in the calling thread (the loader's
    prefetch thread), not page by page when the decoder first touches it.

    A mapped file must not shrink while it is mapped: reading past its new end kills the process
    (SIGBUS). A shard is never rewritten in place (``write_bytes`` renames a finished file over
    the old one, whose mapping stays valid); only one truncated by hand during a run risks it.
    """
    if is_s3(url):
        return read_bytes(url)
    try:
        with open(url, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""  # an empty file cannot be mapped
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                             prot=mmap.PROT_READ)
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc.strerror}") from None


def size(url: str) -> int | None:
    """Size in bytes of the object or file at ``url``, or None when there is none."""
    if not is_s3(url):
        p = Path(url)
        return p.stat().st_size if p.is_file() else None
    bucket, key = split_s3(url)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _explain(url, exc) from None


def exists(url: str) -> bool:
    return size(url) is not None


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_sha256(url: str) -> str | None:
    """The SHA-256 of the object or file at ``url``, or None when there is none (or an object
    written without ``write_bytes``, which records it in the object's metadata: S3's ETag is
    no content hash for multipart uploads)."""
    if not is_s3(url):
        p = Path(url)
        if not p.is_file():
            return None
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    bucket, key = split_s3(url)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _explain(url, exc) from None


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object; boto3 switches to multipart uploads for large payloads. An S3
    object carries its SHA-256 in its metadata (``stored_sha256``)."""
    if not is_s3(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a shard
        return
    bucket, key = split_s3(url)
    try:
        s3_client().upload_fileobj(io.BytesIO(data), bucket, key,
                                   ExtraArgs={"Metadata": {"sha256": sha256(data)}})
    except Exception as exc:
        raise _explain(url, exc) from None
    written = size(url)
    if written != len(data):
        raise StorageError(f"upload of {url} wrote {written} bytes, expected {len(data)}")


def ensure_bucket(url: str) -> None:
    """Create the bucket of an s3:// URL when it does not exist (used by the local stack)."""
    bucket, _ = split_s3(url)
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)


def register_webdataset_s3() -> None:
    """Teach webdataset's ``gopen`` to read s3:// URLs through boto3 (it has no reader of its own)."""
    import webdataset

    def _open(url, mode="rb", bufsize=8192, **kw):
        return open_stream(url)

    webdataset.gopen_schemes["s3"] = _open
