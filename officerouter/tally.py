"""What the core counts for the operator's metrics: plain integers.  Sans-IO.

The rooms add to a :class:`Tally` on their own paths (a dictionary update per
routed message, never per connection); ``officerouter.metrics`` reads it when
Prometheus scrapes.  Nothing here knows Prometheus.
"""

from __future__ import annotations

import attrs


@attrs.define
class Tally:
    """Counts kept by the rooms of one registry, since the process started."""

    #: Message type -> connections a routed message (a notification, a relayed
    #: client message) was written to.
    deliveries: dict[str, int] = attrs.Factory(dict)
    #: Reconnections asking ``?since=``: recovered (``True``) or not.
    recoveries: dict[bool, int] = attrs.Factory(lambda: {True: 0, False: 0})

    def delivered(self, type_: str, count: int) -> None:
        """A message of ``type_`` was written to ``count`` connections."""
        deliveries = self.deliveries
        deliveries[type_] = deliveries.get(type_, 0) + count
