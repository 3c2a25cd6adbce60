"""The chaos suite's fault-injecting S3 proxy (bench/s3_fault_proxy.py), in front of moto's server: it injects what
it says it does, counts each fault, and forwards everything else unchanged."""

from __future__ import annotations

import http.client
import time

import pytest

from bench.s3_fault_proxy import FaultProxy
from conftest import S3_TEST_KEY, S3_TEST_SECRET, new_bucket


@pytest.fixture
def proxy_for(s3_endpoint):
    started: list[FaultProxy] = []

    def start(**options) -> FaultProxy:
        started.append(FaultProxy(s3_endpoint, **options).start())
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def client(endpoint: str, **config):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_TEST_KEY,
                        aws_secret_access_key=S3_TEST_SECRET, config=Config(**config))


def get(proxy: FaultProxy, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*proxy.url.removeprefix("http://").split(":"), timeout=10)
    connection.request("GET", path)
    return connection.getresponse()


def test_without_faults_every_request_is_forwarded_unchanged(s3_endpoint, proxy_for):
    bucket, _ = new_bucket(s3_endpoint)
    proxy = proxy_for(rate=0.0)
    s3 = client(proxy.url)
    payload = bytes(range(256)) * 1000
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=payload)
    assert s3.get_object(Bucket=bucket, Key="a/b.bin")["Body"].read() == payload
    assert s3.head_object(Bucket=bucket, Key="a/b.bin")["ContentLength"] == len(payload)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b.bin"]
    assert proxy.counts["requests"] == 4 and proxy.injected() == 0


@pytest.mark.parametrize("fault,status,code", [("503", 503, "SlowDown"), ("500", 500, "InternalError")])
def test_5xx_answers_carry_an_s3_error_body(s3_endpoint, proxy_for, fault, status, code):
    bucket, _ = new_bucket(s3_endpoint)
    proxy = proxy_for(rate=1.0, faults=(fault,))
    for _ in range(3):
        response = get(proxy, f"/{bucket}?list-type=2")
        assert response.status == status and f"<Code>{code}</Code>".encode() in response.read()
    assert proxy.counts == {"requests": 3, fault: 3}


def test_a_dropped_request_gets_no_answer_and_is_not_forwarded(s3_endpoint, proxy_for):
    bucket, _ = new_bucket(s3_endpoint)
    proxy = proxy_for(rate=1.0, faults=("drop",))
    with pytest.raises(http.client.RemoteDisconnected):
        get(proxy, f"/{bucket}?list-type=2")
    s3 = client(proxy.url, retries={"max_attempts": 2, "mode": "standard"})
    with pytest.raises(Exception, match="(?i)connection"):
        s3.put_object(Bucket=bucket, Key="never", Body=b"x")
    assert "Contents" not in client(s3_endpoint).list_objects_v2(Bucket=bucket)  # never reached the store
    # every request dropped: the raw one, and each of the client's attempts (its HTTP layer may add one more)
    assert proxy.counts["requests"] == proxy.counts["drop"] >= 3 and proxy.injected() == proxy.counts["drop"]


def test_a_slow_answer_comes_late_and_whole(s3_endpoint, proxy_for):
    bucket, _ = new_bucket(s3_endpoint)
    client(s3_endpoint).put_object(Bucket=bucket, Key="k", Body=b"late but whole")
    proxy = proxy_for(rate=1.0, faults=("slow",), delay_s=0.3)
    started = time.perf_counter()
    assert client(proxy.url).get_object(Bucket=bucket, Key="k")["Body"].read() == b"late but whole"
    assert time.perf_counter() - started >= 0.3 and proxy.counts == {"requests": 1, "slow": 1}


def test_the_rate_is_the_share_of_requests_faulted(s3_endpoint, proxy_for):
    bucket, _ = new_bucket(s3_endpoint)
    proxy = proxy_for(rate=0.25, seed=2, delay_s=0.0)  # one client in turn: the same draws every run
    s3 = client(proxy.url, retries={"max_attempts": 10, "mode": "standard"})
    for i in range(20):  # the client's retries carry every call through
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=str(i).encode())
        assert s3.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read() == str(i).encode()
    requests, injected = proxy.counts["requests"], proxy.injected()
    assert requests >= 40 and 0.1 < injected / requests < 0.4
    assert {f for f in ("drop", "503", "500", "slow") if proxy.counts[f]} == {"drop", "503", "500", "slow"}


def test_ray_trains_filesystem_rides_out_a_faulty_s3(s3_endpoint, proxy_for):
    """What Ray Train and Tune write checkpoints through (`arrow_filesystem`) survives drops and 5xx answers at a
    rate that made pyarrow's own S3 client lose about half of these writes and reads (RELIABILITY.md, scenario 4)."""
    from pipeline.data.storage import arrow_filesystem
    from schemas.common import StorageConfig

    bucket, _ = new_bucket(s3_endpoint)
    proxy = proxy_for(rate=0.3, seed=2, faults=("drop", "503", "500"))
    filesystem = arrow_filesystem(StorageConfig(endpoint_url=proxy.url, region="us-east-1",
                                                access_key_id=S3_TEST_KEY, secret_access_key=S3_TEST_SECRET))
    for i in range(20):
        with filesystem.open_output_stream(f"{bucket}/checkpoint/{i}.bin") as handle:
            handle.write(bytes([i]) * 1000)
        with filesystem.open_input_stream(f"{bucket}/checkpoint/{i}.bin") as handle:
            assert handle.read() == bytes([i]) * 1000
    assert proxy.injected() > 10
