"""The commands that run until stopped: `serve` (the HTTP API under gunicorn),
`worker` (triggered decisions and outbox delivery) and `echo-executor` (an executor to try
the service with)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from app.shared.config import REQUEST_TIMEOUT_SECONDS, Settings
from app.shared.store import EmbeddedRedis, is_cluster_url

from .common import load_settings, open_service


@click.command()
@click.option("--host", help="bind address (default: DECISION_HOST)")
@click.option("--port", type=int, help="port (default: DECISION_PORT)")
@click.option("--workers", type=int, help="gunicorn workers (default: DECISION_WORKERS)")
@click.option("--dev", is_flag=True, help="Flask's single-process development server instead")
def serve(host: str | None, port: int | None, workers: int | None, dev: bool) -> None:
    """Serve the HTTP API (gunicorn), starting the embedded Redis if none is configured."""
    from app.policy.embedded import exec_with_go_runtime

    exec_with_go_runtime()
    settings = load_settings()
    settings = settings.replace(
        host=host or settings.host, port=port or settings.port,
        workers=workers or settings.workers,
    )
    taken = _cannot_listen(settings.host, settings.port)
    if taken:  # before Redis starts and before "listening": gunicorn would retry, then fail
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {taken} (another server, "
            "perhaps another `decision-service serve`, holds it: stop it, or choose another "
            "port with --port or DECISION_PORT)")
    embedded = None
    if settings.redis_url is None:
        # Started here, before the workers fork, so that every worker shares it.
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.replace(redis_url=embedded.start())
        click.echo(f"embedded Redis: {settings.redis_url} (data in {embedded.data_dir})")
    elif settings.redis_cluster is None:  # asked once here, not by every worker that starts
        settings = settings.replace(redis_cluster=is_cluster_url(
            settings.redis_url, timeout_seconds=settings.redis_timeout_seconds))
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"decision service listening on {url}  (try: curl {url}/readyz)")
    try:
        if dev:
            from app.api import create_app

            create_app(settings).run(host=settings.host, port=settings.port, threaded=True)
        else:
            run_gunicorn(settings)
    finally:
        if embedded is not None:
            embedded.stop()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not bind host:port now (as gunicorn binds: SO_REUSEADDR, so a
    port left in TIME_WAIT is free), or None when it could."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"{host} is no address here ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _control_socket(settings: Settings) -> Path | None:
    """gunicorn's control socket (`gunicornc`) of this instance, in the data directory and
    named by port; by default gunicorn puts one in ~/.gunicorn that every instance of the
    user shares, each new one taking it from the last. None (no control socket) when the
    path is too long for a Unix socket."""
    from app.shared.store import MAX_SOCKET_PATH

    path = settings.data_dir.resolve() / f"gunicorn-{settings.port}.ctl"
    return path if len(str(path)) <= MAX_SOCKET_PATH else None


@click.command("echo-executor")
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--port", type=int, default=9000, show_default=True, help="port")
def echo_executor(host: str, port: int) -> None:
    """An executor for trying the service: print each action delivered to it, answer 200.

    config/executors.local.yaml (what `make run` uses) sends every action of the sample
    rules here. Stop it and deliveries are retried, then parked as failed."""
    from app.dispatch.echo import serve_echo

    click.echo(f"echo executor on http://{host}:{port}: every action delivered here is "
               "printed (Ctrl-C stops it)")
    serve_echo(host, port, click.echo)

@click.command()
@click.option("--once", is_flag=True, help="one pass over the due work, then exit")
def worker(once: bool) -> None:
    """Make triggered decisions and deliver the outbox until stopped (SIGTERM/SIGINT).

    Run as many as you like: each claims its work in Redis with a lease, and work of a
    worker that dies is taken over when its lease runs out."""
    import signal

    from app.policy.embedded import exec_with_go_runtime

    exec_with_go_runtime()

    service = open_service()
    if once:
        click.echo(f"{service.worker.run_once()} item(s) handled")
        service.close()
        return
    signal.signal(signal.SIGTERM, lambda *_: service.worker.stop(timeout=0))
    click.echo("worker running (triggered decisions, outbox delivery); Ctrl-C stops it")
    try:
        service.worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()

def run_gunicorn(settings: Settings) -> None:
    """The API under gunicorn, as `settings` say, until gunicorn is stopped."""
    import logging

    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger
    from gunicorn.workers.sync import SyncWorker

    from app.shared.logs import dict_config

    class Worker(SyncWorker):
        """Ctrl-C (SIGINT to the whole process group) and the arbiter's SIGQUIT stop a
        worker as SIGTERM does: after the response it is writing, or once it has booted.
        gunicorn's own quick stop calls sys.exit() from the signal handler, which cut
        that response mid-write and logged a SystemExit traceback, or a "release unlocked
        lock" one when it landed in a booting worker; the arbiter still kills a worker
        that takes longer than `graceful_timeout`."""

        def handle_quit(self, sig: int, frame: Any) -> None:
            self.alive = False
            self.cfg.worker_int(self)

    class AccessLogger(Logger):
        """gunicorn builds each access line (about 50 µs) whenever logging is configured:
        only when asked for (the decision lines carry what a decision did)."""

        def access(self, *args: Any) -> None:
            if settings.access_log:
                super().access(*args)

    class Application(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", Worker)
            self.cfg.set("timeout", REQUEST_TIMEOUT_SECONDS)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("logconfig_dict", dict_config(  # the level `main` chose
                settings.log_format, level=logging.getLevelName(logging.getLogger().level)))
            self.cfg.set("logger_class", AccessLogger)
            control = _control_socket(settings)
            if "control_socket" not in self.cfg.settings:
                pass  # a gunicorn before 25.1 has none
            elif control is None:
                self.cfg.set("control_socket_disable", True)
            else:
                self.cfg.set("control_socket", str(control))

        def load(self) -> Any:
            # Each worker builds its own app after fork: its own Redis pool and engines.
            from app.api import create_app

            return create_app(settings)

    Application().run()

