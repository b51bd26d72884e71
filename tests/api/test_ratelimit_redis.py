"""Rate limits shared through Redis (RATE_LIMIT_STORAGE_URI), against a real `redis-server` on 127.0.0.1.

* the real app under real uvicorn with 2 worker processes: one key's limit holds across both with redis://,
  and does not with memory:// (so the first test can fail);
* Redis stopped mid-run: RATE_LIMIT_STORAGE_FAILURE=open lets requests through and counts them in /metrics,
  closed answers 503 in the envelope with Retry-After, local keeps limiting per worker; never a 500;
* a Redis that accepts connections but never answers costs one timeout, not a hung request;
* a bad URI stops start-up with a message that names the problem and not the password.

Skipped, with the reason, where `redis-server` is not installed (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import make_settings
from tests.redis_server import SKIP_REASON, RedisServer, redis_server_path
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "shared-key-1"

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason=SKIP_REASON)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


# --- 2 uvicorn workers ---------------------------------------------------------------------------------


@contextmanager
def uvicorn_workers(tmp_path: Path, **env: str):
    """`uvicorn app.main:app --workers 2` in a clean environment (no .env: the cwd is a tmp folder); yields
    (base URL, the parent's Popen, its output so far)."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    clean.update(PYTHONPATH=str(ROOT), MODEL_DIR=str(tmp_path / "models"), LOG_JSON="false", LOG_LEVEL="WARNING",
                 PROMETHEUS_ENABLED="true", **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--no-proxy-headers", "--log-level", "info"],
        cwd=tmp_path, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.time() + 45
        while sum("Application startup complete" in line for line in list(lines)) < 2:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("uvicorn --workers 2 did not start:\n" + "".join(lines[-40:]))
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_request(base: str, path: str = "/v1/operations") -> int:
    """On a new connection each time, so the kernel hands requests to either worker."""
    with httpx.Client(base_url=base, timeout=10, headers={"X-Api-Key": KEY, "Connection": "close"}) as c:
        return c.get(path).status_code


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_the_limit_holds_across_two_uvicorn_workers_with_redis(tmp_path, redis_server):
    limit = 5
    with uvicorn_workers(tmp_path, API_KEYS=KEY, RATE_LIMIT=f"{limit}/minute",
                         RATE_LIMIT_STORAGE_URI=redis_server.url) as (base, proc, _):
        codes: list[int] = []
        workers: set[int] = set()
        with ThreadPoolExecutor(6) as pool:
            # until Redis has seen the limiter's script from both worker processes (each connection is named
            # loupe-<pid> by the process that opened it), at most 120 requests
            while len(workers) < 2 and len(codes) < 120:
                codes += pool.map(lambda _: one_request(base), range(12))
                workers = {int(row["name"].split("-")[1]) for row in redis_server.client_list()
                           if row.get("name", "").startswith("loupe-") and row.get("cmd") == "evalsha"}
        assert len(workers) == 2, f"only {workers} served requests"
        assert all(parent_pid(pid) == proc.pid for pid in workers)  # the two uvicorn workers, not some other
        assert codes.count(200) == limit, codes  # one budget for the key, whichever worker answered
        assert codes.count(429) == len(codes) - limit
        assert one_request(base, "/health") == 200  # probes are not limited


def test_with_memory_storage_each_worker_has_its_own_budget(tmp_path):
    """The control experiment: the same 2 workers with memory:// let more than the limit through, so the
    previous test would fail if the counters were not shared."""
    limit = 5
    with uvicorn_workers(tmp_path, API_KEYS=KEY, RATE_LIMIT=f"{limit}/minute",
                         RATE_LIMIT_STORAGE_URI="memory://") as (base, _, _):
        codes: list[int] = []
        with ThreadPoolExecutor(6) as pool:
            while codes.count(200) <= limit and len(codes) < 120:
                codes += pool.map(lambda _: one_request(base), range(12))
    assert limit < codes.count(200) <= 2 * limit, codes


# --- Redis stopped mid-run -------------------------------------------------------------------------------


def storage_errors(base: str, mode: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    m = re.search(rf'^loupe_rate_limit_storage_errors_total{{mode="{mode}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def get(base: str, key: str = KEY) -> httpx.Response:
    return httpx.get(base + "/v1/operations", headers={"X-Api-Key": key}, timeout=10)


def test_fail_open_lets_requests_through_and_counts_them(live_factory, redis_server):
    live = live_factory(api_keys=KEY, rate_limit="2/minute", rate_limit_storage_uri=redis_server.url,
                        rate_limit_storage_failure="open")
    assert [get(live.url).status_code for _ in range(3)] == [200, 200, 429]  # counted in Redis
    health = httpx.get(live.url + "/health").json()
    assert health["rate_limit"] == {**health["rate_limit"], "storage": "redis", "shared": True,
                                    "failure_mode": "open", "reachable": True}
    before = storage_errors(live.url, "open")
    redis_server.stop()
    replies = [get(live.url) for _ in range(4)]
    assert [r.status_code for r in replies] == [200] * 4  # open: through, uncounted (the budget was spent)
    assert "x-ratelimit-remaining" not in replies[0].headers
    assert storage_errors(live.url, "open") == before + 4
    assert get(live.url, "wrong-key").status_code == 401  # keys are checked in every mode
    health = httpx.get(live.url + "/health").json()
    assert health["status"] == "degraded" and health["rate_limit"]["reachable"] is False
    assert "Connection refused" in health["rate_limit"]["last_error"]
    redis_server.start()  # back (empty: no persistence); after the short back-off, counted there again
    time.sleep(1.1)
    assert get(live.url).headers["x-ratelimit-remaining"] == "1"
    assert httpx.get(live.url + "/health").json()["rate_limit"]["reachable"] is True


def test_fail_closed_answers_503_in_the_envelope(live_factory, redis_server):
    live = live_factory(api_keys=KEY, rate_limit="100/minute", rate_limit_storage_uri=redis_server.url,
                        rate_limit_storage_failure="closed")
    assert get(live.url).status_code == 200
    before = storage_errors(live.url, "closed")
    redis_server.stop()
    for _ in range(3):
        r = get(live.url)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and error["request_id"] == r.headers["x-request-id"]
        assert error["detail"]["reason"] == "rate_limit_storage_unreachable" and error["detail"]["storage"] == "redis"
    assert storage_errors(live.url, "closed") == before + 3
    assert httpx.get(live.url + "/health").status_code == 200  # probes never touch the limiter


def test_fail_local_keeps_limiting_per_worker(live_factory, redis_server):
    live = live_factory(rate_limit="3/minute", rate_limit_storage_uri=redis_server.url)  # the default mode
    assert get(live.url).headers["x-ratelimit-remaining"] == "2"
    redis_server.stop()
    assert [get(live.url).status_code for _ in range(4)] == [200, 200, 200, 429]  # this worker's own counters


def test_a_redis_that_never_answers_costs_one_timeout(live_factory):
    """A host that accepts the connection and never replies (a hung Redis): the timeout ends the call, and
    for the next second the storage is left alone."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # never accepted: connections complete in the backlog and no byte ever comes back
    try:
        live = live_factory(rate_limit="3/minute", rate_limit_storage_uri=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
                            rate_limit_storage_failure="open", rate_limit_storage_timeout_s=0.3)
        health = httpx.get(live.url + "/health").json()  # the start-up PING already timed out
        assert health["rate_limit"]["reachable"] is False and "Timeout" in health["rate_limit"]["last_error"]
        time.sleep(1.05)
        start = time.perf_counter()
        assert get(live.url).status_code == 200
        assert time.perf_counter() - start < 2.0  # one 0.3 s timeout (no retries with back-off)
        start = time.perf_counter()
        assert get(live.url).status_code == 200
        assert time.perf_counter() - start < 0.25  # backing off: not even tried
    finally:
        silent.close()


# --- start-up ------------------------------------------------------------------------------------------


def test_a_bad_uri_stops_start_up_without_showing_the_password(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    clean.update(PYTHONPATH=str(ROOT), MODEL_DIR=str(tmp_path / "models"), LOG_JSON="false",
                 RATE_LIMIT_STORAGE_URI="redis://loupe:s3cret-pw@redis.internal:sixthousand/0")
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(free_port())],
                          cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "RATE_LIMIT_STORAGE_URI redis://***@redis.internal:sixthousand/0 cannot be used" in out, out[-2000:]
    assert "s3cret-pw" not in out


@pytest.mark.parametrize("uri, words", [
    ("memcached://cache:11211", "scheme memcached:// is not supported"),
    ("async+redis://:pw@h:6379", "drop the 'async+'"),
    ("localhost:6379", "scheme (none) is not supported"),
])
def test_unsupported_schemes_are_refused_by_the_settings(uri, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        make_settings(rate_limit_storage_uri=uri)
    assert words in str(err.value) and ":pw@" not in str(err.value)


def test_a_sentinel_uri_without_its_service_name_is_refused(app_factory):
    from app.core.ratelimit_storage import StorageConfigError

    with pytest.raises(StorageConfigError, match="service_name") as err:
        app_factory(rate_limit_storage_uri="redis+sentinel://:hunter22@s1:26379,s2:26379")
    assert "hunter22" not in str(err.value)


@pytest.mark.parametrize("uri, shown", [
    ("redis://:pw-1234@h:6379/0", "redis://***@h:6379/0"),
    ("redis://user:pw-1234@h:6379/0?password=pw-5678&db=1", "redis://***@h:6379/0?password=***&db=1"),
    ("redis+sentinel://:pw-1234@s1:26379,s2:26379/main", "redis+sentinel://***@s1:26379,s2:26379/main"),
    ("memory://", "memory://"),
])
def test_logged_uris_carry_no_password(uri, shown):
    from app.core.ratelimit_storage import redact_uri

    assert redact_uri(uri) == shown
