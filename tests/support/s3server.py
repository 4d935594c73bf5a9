"""A real S3-compatible server for tests and benchmarks: moto's server mode on a free local port."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from unittest import mock

#: what a client of the server needs in its environment (moto accepts any credentials)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server(bucket: str = "quantmill") -> Iterator[dict[str, str]]:
    """moto's S3 server in a thread, with ``bucket`` created; yields the client environment
    (``S3_ENV`` plus ``AWS_ENDPOINT_URL``), which the caller sets for itself and its subprocesses."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        with environment(env):
            import boto3

            boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


def environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set for a ``with`` block, then as it was."""
    return mock.patch.dict(os.environ, values)
