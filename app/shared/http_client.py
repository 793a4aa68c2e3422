"""Outgoing HTTP (the OPA sidecar, the executors): pooled keep-alive connections, and no
retries inside requests, because each caller decides itself what a failure means.

A URL `unix:///path/to/socket` is HTTP over that Unix domain socket (an OPA sidecar
started with `opa run --server --addr unix:///path/to/socket`)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any, cast

import requests
import urllib3
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.exceptions import NewConnectionError

UNIX_SCHEME = "unix://"


class _UnixConnection(HTTPConnection):
    """An HTTP/1.1 connection whose socket is a Unix domain socket."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, int | float):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise NewConnectionError(self, f"cannot connect to {self.socket_path}: {exc}") \
                from exc
        return sock


class _UnixSocketAdapter(HTTPAdapter):
    """requests' transport adapter, with every request on one pool of `_UnixConnection`s."""

    def __init__(self, socket_path: str, *, pool_size: int) -> None:
        super().__init__(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._pool = urllib3.HTTPConnectionPool("localhost", maxsize=pool_size,
                                                socket_path=socket_path)
        self._pool.ConnectionCls = _UnixConnection

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> urllib3.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def pooled_session(*, pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Endpoint:
    """Requests to one URL (an OPA sidecar, an executor), prepared once per method and
    path and handed straight to requests' transport adapter.

    `Session.request` does on every call what needs doing once for a fixed URL: it reads
    proxies, certificate bundles and ~/.netrc from the environment, walks cookie jars and
    runs hooks. That was about half of what a call to OPA on loopback cost (370 of 780 µs
    of client CPU here), and a third of a delivery worker's CPU. Here the environment's
    proxies and CA bundle are read once, when the endpoint is made; there are no cookies
    and no netrc credentials; and a redirect is an answer like any other (requests would
    follow it, and turn a POST into a GET on the way)."""

    def __init__(self, url: str, *, pool_size: int,
                 headers: Mapping[str, str] | None = None) -> None:
        self._adapter: BaseAdapter
        if url.startswith(UNIX_SCHEME):  # no proxy, no TLS: a socket on this machine
            self.url = "http://localhost"
            self._adapter = _UnixSocketAdapter(url.removeprefix(UNIX_SCHEME),
                                               pool_size=pool_size)
            self._send_options: dict[str, Any] = {"proxies": {}, "verify": True}
        else:
            self.url = url
            session = pooled_session(pool_size=pool_size)
            self._adapter = session.get_adapter(url)
            environment = session.merge_environment_settings(url, {}, None, None, None)
            self._send_options = {"proxies": environment["proxies"],
                                  "verify": environment["verify"]}
        self._headers = {**requests.utils.default_headers(), **(headers or {})}
        self._prepared: dict[tuple[str, str], requests.PreparedRequest] = {}

    def request(self, method: str, path: str = "", *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float,
                total: bool = False) -> requests.Response:
        """`path` (with a query string, if any) is appended to the URL. Raises requests'
        exceptions (a Timeout, a ConnectionError) as `Session.request` does.

        `timeout` bounds each wait on the socket; with `total`, the whole call too (a peer
        that answers a byte at a time cannot keep it going): past it the call raises a
        Timeout and is abandoned to its own thread, where the socket timeout ends it."""
        if not total:
            return self._send(method, path, body, headers, timeout)
        outcome: list[Any] = []
        done = threading.Event()

        def send() -> None:
            try:
                outcome.append(self._send(method, path, body, headers, timeout))
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, name="http-attempt", daemon=True).start()
        if not done.wait(timeout):
            raise requests.Timeout(f"no complete answer within {timeout:g} s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return cast(requests.Response, outcome[0])

    def _send(self, method: str, path: str, body: bytes | None,
              headers: Mapping[str, str] | None, timeout: float) -> requests.Response:
        template = self._prepared.get((method, path))
        if template is None:  # a handful: the policy paths asked about, or one for a POST
            template = requests.Request(method, f"{self.url}{path}",
                                        headers=self._headers).prepare()
            self._prepared[(method, path)] = template
        prepared = template.copy()
        if headers:
            prepared.headers.update(headers)
        if body is not None:
            prepared.prepare_body(body, None)  # and its Content-Length
        response = self._adapter.send(prepared, timeout=timeout, **self._send_options)
        _ = response.content  # read to the end, as Session.request does: only then does
        return response  # the connection go back to the pool for the next call

    def close(self) -> None:
        self._adapter.close()
