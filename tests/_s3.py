"""An S3-compatible server (moto's server mode) on 127.0.0.1 for the tests of remote storage.

The fixture starts it in this process, creates the bucket ``l2lda`` and sets the ``AWS_*``
variables that pyarrow's and boto3's S3 clients read (the endpoint too), so ``s3://l2lda/…``
URIs work in this process and in the processes it starts with its environment."""
from __future__ import annotations

import pytest


@pytest.fixture
def s3(monkeypatch):
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="l2lda")
    yield env
    server.stop()
