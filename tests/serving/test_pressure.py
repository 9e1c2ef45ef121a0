"""The server under pressure: slow bodies, clients that hang up, a full queue, strangers and browsers."""

from __future__ import annotations

import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.client import Client
from serving.engine import Engine
from serving.limits import Limits
from serving.npz_wire import encode_reconstruct_request

N = 32


def _scan(count: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:N, :N] - N // 2
    patterns = (10 * np.exp(-(xx**2 + yy**2) / 30.0) * (1 + 0.3 * rng.random((count, N, N)))).astype(np.float32)
    return patterns, np.stack([np.arange(count) * 2.0, np.arange(count) % 3 * 2.0], axis=1)


def _raw(url: str, head: bytes, body: bytes = b"", *, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send ``head`` (request line and headers) and ``body`` on a bare socket; return what the server
    answers within ``wait_s`` and the seconds until its first byte."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        start = time.monotonic()
        sock.sendall(head + body)
        answer = sock.recv(65536)
        elapsed = time.monotonic() - start
        length = re.search(rb"content-length: (\d+)", answer, re.I)
        while length and len(answer.partition(b"\r\n\r\n")[2]) < int(length.group(1)):
            answer += sock.recv(65536)
        return answer, elapsed


def _metric_lines(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def test_a_half_sent_body_gets_408_after_the_idle_timeout(engine: Engine, serve) -> None:
    server = serve(create_app(engine, limits=Limits(body_idle_timeout_s=0.5, body_timeout_s=5)))
    head = b"POST /v1/reconstruct HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    answer, elapsed = _raw(server.url, head, b"PK\x03\x04" + b"\0" * 100)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time (104 bytes received" in answer
    assert 0.4 < elapsed < 3.0
    assert Client(server.url).ready()


def test_a_full_server_answers_503_before_reading_the_body(engine: Engine, serve) -> None:
    server = serve(create_app(engine, max_queue_delay_us=3_000_000, max_queue_size=1))
    with Client(server.url) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.infer, "oracle", np.ones((1, 1, N, N), np.float32), np.ones(1, np.float32))
        time.sleep(0.5)  # the first request now waits in the batcher for company
        head = (b"POST /v2/models/oracle/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 200000000\r\n\r\n")  # a 200 MB body announced, none sent
        answer, elapsed = _raw(server.url, head)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After" in answer.replace(b"retry-after", b"Retry-After")
        assert b"1 infer requests are in progress, the limit (--max-queue-size)" in answer
        assert elapsed < 1.0
        first.result(timeout=10)


def test_a_client_that_hangs_up_has_its_work_cancelled_and_is_no_500(engine: Engine, serve, caplog) -> None:
    server = serve(create_app(engine, max_queue_delay_us=1_500_000, max_batch_size=16))
    patterns, positions = _scan(4)
    body = encode_reconstruct_request(patterns, positions)
    head = (f"POST /v1/reconstruct HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        time.sleep(0.4)  # decoded and waiting in the batcher (1.5 s queue delay)
    time.sleep(2.0)  # past the queue delay: had it not been cancelled, the batch would have run by now
    metrics = _metric_lines(server.url)
    assert 'ptychopinn_requests_total{route="/v1/reconstruct",status="499"} 1.0' in metrics
    assert not re.search(r'status="5\d\d"', metrics)
    assert _inferred(metrics) == 0  # no compute for it
    assert "Traceback" not in caplog.text
    with Client(server.url) as client:
        assert client.reconstruct(patterns, positions).n_patterns == 4
    assert _inferred(_metric_lines(server.url)) == 4


def _inferred(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r"^ptychopinn_inference_count_total\S* (\S+)$", metrics, re.M))


def test_a_client_that_hangs_up_mid_body_is_logged_as_499(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    head = b"POST /v1/reconstruct HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + b"\0" * 1000)
    time.sleep(0.5)
    metrics = _metric_lines(server.url)
    assert 'route="/v1/reconstruct",status="499"' in metrics and not re.search(r'status="5\d\d"', metrics)


def _asgi_get(app, path: str, *, client: tuple[str, int], headers: dict[str, str] | None = None) -> httpx.Response:
    """A request from ``client`` straight into the ASGI app (a remote address cannot be made on loopback)."""
    import asyncio

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(call())


def test_without_a_token_only_loopback_clients_are_answered(engine: Engine) -> None:
    closed, opened = create_app(engine), create_app(engine, allow_remote=True)
    tokened = create_app(engine, token="s3cret")
    remote = ("10.1.2.3", 5555)
    response = _asgi_get(closed, "/v2/health/live", client=remote)
    assert response.status_code == 403
    assert "answers only clients on its own machine (the client is 10.1.2.3)" in response.json()["error"]
    assert _asgi_get(closed, "/v2/health/live", client=("127.0.0.1", 5555)).status_code == 200
    assert _asgi_get(closed, "/v2/health/live", client=("::1", 5555)).status_code == 200
    assert _asgi_get(opened, "/v2/health/live", client=remote).status_code == 200
    assert _asgi_get(tokened, "/v2/health/live", client=remote, headers={"Host": "beamline-host:8000"}).status_code == 200
    assert _asgi_get(tokened, "/v2", client=remote).status_code == 401


def test_a_foreign_host_header_is_refused_without_a_token(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    port = server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert httpx.get(f"{server.url}/v2/health/live", headers={"Host": host}).status_code == 200, host
    response = httpx.get(f"{server.url}/v2/health/live", headers={"Host": f"attacker.example:{port}"})
    assert response.status_code == 403
    assert "Host header 'attacker.example:" in response.json()["error"] and "--allowed-hosts" in response.json()["error"]
    allowed = serve(create_app(engine, allowed_hosts=["beamline.example"]))
    assert httpx.get(f"{allowed.url}/v2/health/live", headers={"Host": "beamline.example:1"}).status_code == 200


def test_cors_is_off_by_default_and_on_for_listed_origins(engine: Engine, serve) -> None:
    origin = {"Origin": "http://viewer.example"}
    default = serve(create_app(engine))
    response = httpx.get(f"{default.url}/v2", headers=origin)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = httpx.options(f"{default.url}/v2/models/oracle/infer",
                              headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    listed = serve(create_app(engine, cors_origins=["http://viewer.example"]))
    response = httpx.get(f"{listed.url}/v2", headers=origin)
    assert response.headers["access-control-allow-origin"] == "http://viewer.example"


def test_the_token_is_compared_in_constant_time(engine: Engine, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    server = serve(create_app(engine, token="s3cret"))
    assert httpx.get(f"{server.url}/v2", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{server.url}/v2", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert calls == [(b"wrong", b"s3cret"), (b"s3cret", b"s3cret")]


def test_limits_must_be_positive(engine: Engine) -> None:
    from ptycho_torch.errors import ConfigError

    with pytest.raises(ConfigError, match="`body_timeout_s` must be positive, got 0"):
        Limits(body_timeout_s=0)
    with pytest.raises(ConfigError, match="`--max-concurrent-reconstructs` must be a positive integer, got 0"):
        create_app(engine, max_concurrent_reconstructs=0)
