"""moto's S3 server on loopback (the s3_server fixture): s3fs writes and reads through it, using only the
standard AWS variables, and another client (boto3, botocore's own HTTP stack) sees the same objects."""

from __future__ import annotations

import boto3
import pytest

from tests.s3_server import BUCKET


def test_s3fs_reads_and_writes_through_moto(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint and keys from AWS_ENDPOINT_URL etc.
    payload = bytes(range(256)) * 4097  # > 1 MiB: s3fs's write goes through its buffered upload
    with fs.open(f"{BUCKET}/smoke/part-0.bin", "wb") as f:
        f.write(payload)
    fs.pipe(f"{BUCKET}/smoke/_SUCCESS", b"")
    assert fs.cat(f"{BUCKET}/smoke/part-0.bin") == payload
    assert sorted(fs.ls(f"{BUCKET}/smoke")) == [f"{BUCKET}/smoke/_SUCCESS", f"{BUCKET}/smoke/part-0.bin"]

    # The objects are in the server, not a client cache: boto3 lists and reads them over HTTP.
    client = boto3.client("s3")
    assert client.meta.endpoint_url == s3_server.endpoint
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="smoke/")["Contents"]
    assert {o["Key"]: o["Size"] for o in listed} == {"smoke/_SUCCESS": 0, "smoke/part-0.bin": len(payload)}
    assert client.get_object(Bucket=BUCKET, Key="smoke/part-0.bin")["Body"].read() == payload

    # A missing object is the S3 error, mapped to the Python one.
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{BUCKET}/smoke/missing.bin")
    fs.rm(f"{BUCKET}/smoke", recursive=True)
    assert not fs.exists(f"{BUCKET}/smoke/part-0.bin")
