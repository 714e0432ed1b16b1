"""A SelectConnection that sends what it has to say in one write, and at once when asked.

pika hands its transport each frame on its own (a publish is three: method,
header and body), and the transport sends each with a write of its own, on
the I/O loop's next turn, after asking the poller to watch the socket for
writability and before asking it to stop. With TCP_NODELAY each write is a
segment the broker reads on its own. Here the frames wait in a list and go
out joined, in one write straight to the socket: when `flush()` is called
(a reply is published, a batch's publishes are made) or at the latest at the
end of the loop's turn. Measured one command at a time, a command costs the
worker three socket writes instead of seven, and its reply leaves the worker
as soon as the store's commit returns instead of after the event's frames.

What the socket does not take at once goes to pika's transport, which sends
it when the socket is writable again: the bytes keep their order either way.
Over TLS everything goes through the transport (its SSL states are its own).
"""

from __future__ import annotations

from typing import Any

import pika
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport


class FlushingConnection(pika.SelectConnection):
    """pika.SelectConnection, writing each turn's frames (or each flush's) at once, joined."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._unsent: list[bytes] = []
        self._flush_due = False
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        self._unsent.append(data)
        if not self._flush_due:
            # One timer a turn: an explicit flush() leaves it be, and it writes whatever
            # frames came after that flush (a timer costs a heap push and a debug log).
            self._flush_due = True
            self.ioloop.call_later(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._flush_due = False
        self.flush()

    def flush(self) -> None:
        """Write every frame not yet written, in one write when the socket takes it."""
        if not self._unsent:
            return
        data = b"".join(self._unsent)  # one frame: that frame itself, not a copy
        self._unsent.clear()
        transport = self._transport  # type: ignore[attr-defined]  # pika's, not in the stubs
        if transport is None:  # the connection is gone, and what it had to say with it
            return
        sent = 0
        if isinstance(transport, _AsyncPlaintextTransport) \
                and transport.get_write_buffer_size() == 0:
            try:
                sent = transport._sock.send(data)  # type: ignore[attr-defined]  # see above
            except OSError:
                sent = 0  # would block, or a failure the transport sees on its own write
        if sent < len(data):
            transport.write(data[sent:])
