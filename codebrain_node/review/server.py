"""Serve the review app with uvicorn on a thread, so ``codebrain-node serve`` can run it beside the other stages.

The socket is bound before the thread starts, so a taken port fails at once in the caller and port 0 gives a
free port that :attr:`ReviewServer.port` reports. Stopping asks uvicorn to finish open requests, then joins.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.review.app import create_app

log = logging.getLogger(__name__)


class ReviewServer:
    """The review app on ``review.bind_address:review.port`` in a daemon thread."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.app = create_app(settings, factory)
        config = uvicorn.Config(
            self.app,
            host=settings.review.bind_address,
            port=settings.review.port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the review server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.review.bind_address
        host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ReviewServer:
        family = socket.AF_INET6 if ":" in self.settings.review.bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.review.bind_address, self.settings.review.port))
        sock.set_inheritable(True)
        self._socket = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="review-web", daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < timeout_s:
            threading.Event().wait(0.02)
            waited += 0.02
        if not self._server.started:
            self.stop()
            raise RuntimeError("the review web server did not start")
        log.info("review web app listening on %s", self.url)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_review_server(settings: Settings, factory: sessionmaker[Session], stop_event: threading.Event) -> None:
    """Serve until ``stop_event`` is set (blocking); for ``codebrain-node serve``."""
    server = ReviewServer(settings, factory).start()
    try:
        stop_event.wait()
    finally:
        server.stop()
