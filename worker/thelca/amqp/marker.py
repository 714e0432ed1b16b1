"""The stuck marker: `<queue>.stuck`, held by a consumer whose batch keeps failing.

A quorum queue still counts a cancelled consumer that holds deliveries, so
the consumer count alone cannot tell `thelca health` that one is stuck; the
marker, an exclusive queue that lives as long as the channel holding it, can.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import pika
import pika.channel

from thelca.amqp.topology import stuck_marker

log = logging.getLogger(__name__)

ACCESS_REFUSED = 403


class StuckMarker:
    """Holds `<queue>.stuck` for one consumer (name) while it is stuck."""

    def __init__(self, name: str, queue: str) -> None:
        self.name = name
        self.queue = queue
        self._channel: pika.channel.Channel | None = None  # holds the marker while stuck
        self._opening = False

    def hold(self, connection: pika.SelectConnection, still_stuck: Callable[[], bool]) -> None:
        """Hold the marker, on a channel of its own: a refusal (another stuck consumer holds
        it, or the broker user may not declare it) closes that channel, not the consumer's.
        `still_stuck` tells, once the channel is open, whether the batch went through."""
        if self._channel is not None or self._opening:
            return
        self._opening = True
        connection.channel(on_open_callback=partial(self._on_channel, still_stuck))

    def _on_channel(self, still_stuck: Callable[[], bool], channel: pika.channel.Channel) -> None:
        self._opening = False
        if not still_stuck():  # went through meanwhile
            channel.close()
            return
        self._channel = channel
        channel.add_on_close_callback(self._on_closed)
        channel.queue_declare(stuck_marker(self.queue), exclusive=True,
                              callback=lambda _frame: None)

    def _on_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        if self._channel is channel:
            self._channel = None
        if getattr(reason, "reply_code", None) == ACCESS_REFUSED:
            log.warning("%s: cannot hold %s for `thelca health` to see this stuck batch: %s "
                        "(the README's \"Broker users\" section lists the permission)",
                        self.name, stuck_marker(self.queue), reason)

    def release(self) -> None:
        marker, self._channel = self._channel, None
        if marker is not None and marker.is_open:
            marker.queue_delete(stuck_marker(self.queue),
                                callback=lambda _frame: marker.close())
