"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1 (a real HTTP endpoint that
pyarrow's S3 filesystem and boto3 talk to), with throwaway credentials."""

from __future__ import annotations

from typing import Any

#: what the CLI reads (AWS_* variables) to reach the server; the keys are moto's dummies
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class S3Server:
    """moto's ThreadedMotoServer on 127.0.0.1 at a free port; `endpoint` is its http:// URL."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def put(self, bucket: str, files: dict[str, bytes]) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        for key, data in files.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)

    def close(self) -> None:
        self.server.stop()
