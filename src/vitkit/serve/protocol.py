"""uvicorn's HTTP protocol with a deadline for a request's headers (a slow-loris guard).

uvicorn times out nothing before a request's headers are complete: its keep-alive timer only runs between
requests and any byte received cancels it, so a client that connects and sends nothing, or trickles a header a
byte at a time, holds a connection (one of ``--max-connections``) for ever. :func:`header_deadline_protocol`
gives uvicorn's h11 protocol a deadline: a connection whose next request has not got all its headers
``timeout_s`` after the connection opened, or after the first byte of that request, gets a 408 ``{"error": ...}``
(or, having sent nothing, is closed). The body is :class:`~vitkit.serve.uploads.BodyLimit`'s to time.
"""

import json
from typing import Any

__all__ = ["header_deadline_protocol"]


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's ``H11Protocol`` with a ``timeout_s`` deadline for request headers (pass it as ``http=``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if timeout_s <= 0:
        raise ValueError(f"the header timeout must be positive, got {timeout_s}")

    class HeaderDeadline(H11Protocol):
        _deadline: Any = None
        _cycle_at_arm: Any = None
        _bytes_since_arm = 0
        _idle = False  # between requests of a keep-alive connection (uvicorn's keep-alive timer runs)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._idle:  # the first byte of the next request starts its deadline
                self._idle = False
                self._arm()
            self._bytes_since_arm += len(data)
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._disarm()
            self._idle = True
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._cycle_at_arm, self._bytes_since_arm = self.cycle, 0
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.cycle is not self._cycle_at_arm or self.transport.is_closing():
                return  # the headers came in time: the request is being served (or was)
            if self._bytes_since_arm:
                self.transport.write(_timeout_response(timeout_s))
            self.transport.close()

    return HeaderDeadline


def _timeout_response(timeout_s: float) -> bytes:
    body = json.dumps({"error": f"the request headers were not complete within {timeout_s:g} s"}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
