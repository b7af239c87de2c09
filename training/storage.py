"""The one place that talks to object storage: URLs that are either local paths or s3://.

boto3 reads its endpoint from ``AWS_ENDPOINT_URL`` and credentials from the standard variables,
so the same code reaches AWS S3, MinIO or the embedded moto server. The client is created lazily
(once per process) because DataLoader workers fork after import.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

_local = threading.local()


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
    """A boto3 S3 client for this process and thread, with retries and backoff."""
    client = getattr(_local, "client", None)
    pid = os.getpid()
    if client is None or getattr(_local, "pid", None) != pid:
        import boto3
        from botocore.config import Config

        cfg = Config(
            retries={"max_attempts": 8, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        client = boto3.session.Session().client(
            "s3", config=cfg, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        )
        _local.client, _local.pid = client, pid
    return client


def _explain(url: str, exc: Exception) -> StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    if code in ("NoSuchBucket",):
        return StorageError(f"bucket of {url} does not exist (endpoint {endpoint})")
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(f"{url} does not exist (endpoint {endpoint})")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return StorageError(f"access to {url} denied ({code}): check the AWS credentials")
    return StorageError(f"cannot read {url} from {endpoint}: {type(exc).__name__}: {exc}")


def open_stream(url: str) -> BinaryIO:
    """Open a local file or an s3:// object for sequential reading."""
    if not is_s3(url):
        try:
            return open(url, "rb")
        except OSError as exc:
            raise StorageError(f"cannot open {url}: {exc.strerror}") from None
    bucket, key = split_s3(url)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:  # botocore raises many types; each becomes one clear message
        raise _explain(url, exc) from None


def read_bytes(url: str) -> bytes:
    with open_stream(url) as f:
        return f.read()


def exists(url: str) -> int | None:
    """Size in bytes of the object or file at ``url``, or None when there is none."""
    if not is_s3(url):
        p = Path(url)
        return p.stat().st_size if p.is_file() else None
    bucket, key = split_s3(url)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _explain(url, exc) from None


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object; boto3 switches to multipart uploads for large payloads."""
    if not is_s3(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a shard
        return
    bucket, key = split_s3(url)
    try:
        s3_client().upload_fileobj(io.BytesIO(data), bucket, key)
    except Exception as exc:
        raise _explain(url, exc) from None
    size = exists(url)
    if size != len(data):
        raise StorageError(f"upload of {url} wrote {size} bytes, expected {len(data)}")


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
