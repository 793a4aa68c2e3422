"""app.shared.http_client.Endpoint against a real HTTP server on loopback (the test executor)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from executor_server import Executor

from app.shared.http_client import Endpoint


@pytest.fixture
def executor() -> Iterator[Executor]:
    server = Executor()
    yield server
    server.stop()


def test_headers_of_one_call_do_not_stay_for_the_next(executor: Executor) -> None:
    endpoint = Endpoint(f"{executor.url}/act", pool_size=2,
                        headers={"User-Agent": "tester/1", "Content-Type": "application/json"})
    first = endpoint.request("POST", body=b'{"n": 1}', headers={"Idempotency-Key": "k1"},
                             timeout=2)
    second = endpoint.request("POST", body=b'{"n": 22}', timeout=2)
    assert (first.status_code, second.status_code) == (200, 200)
    one, two = executor.deliveries
    assert (one.path, one.body, one.headers["Idempotency-Key"]) == ("/act", {"n": 1}, "k1")
    assert (two.body, "Idempotency-Key" in two.headers) == ({"n": 22}, False)
    assert two.headers["Content-Length"] == str(len(b'{"n": 22}'))
    assert {one.headers["User-Agent"], two.headers["User-Agent"]} == {"tester/1"}
    assert two.headers["Content-Type"] == "application/json"


def test_one_connection_serves_call_after_call(executor: Executor) -> None:
    endpoint = Endpoint(f"{executor.url}/act", pool_size=2)
    statuses = [endpoint.request("POST", body=b"{}", timeout=2).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert len({delivery.client_port for delivery in executor.deliveries}) == 1


def test_a_proxy_from_the_environment_is_used(executor: Executor,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", executor.url)  # it records the request as a proxy would
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    endpoint = Endpoint("http://executor.invalid/act", pool_size=1)
    assert endpoint.request("POST", body=b"{}", timeout=2).status_code == 200
    assert executor.deliveries[0].path == "http://executor.invalid/act"


def test_no_proxy_from_the_environment_is_honoured(executor: Executor,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    endpoint = Endpoint(f"{executor.url}/act", pool_size=1)
    assert endpoint.request("POST", body=b"{}", timeout=2).status_code == 200
    assert executor.deliveries[0].path == "/act"
