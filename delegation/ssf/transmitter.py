"""The SSF transmitter's parts, built together: stream management, poll delivery and push delivery."""

from __future__ import annotations

from dataclasses import dataclass

from ..resources import Resources
from .outbox import Outbox
from .poll import Poller
from .push import PushDelivery, SetPusher
from .seams import SetSigner, SsfStore, StreamTimings
from .streams import StreamManager


@dataclass(frozen=True, slots=True)
class Transmitter:
    streams: StreamManager
    poller: Poller
    delivery: PushDelivery

    @classmethod
    def of(cls, store: SsfStore, signer: SetSigner, resources: Resources, push: SetPusher, *, issuer: str,
           timings: StreamTimings) -> Transmitter:
        """Streams for the clients of `resources`, SETs signed by `signer` with `issuer` as `iss`."""
        outbox = Outbox(store, signer, issuer=issuer)
        streams = StreamManager(store, outbox, resources, issuer=issuer, timings=timings)
        delivery = PushDelivery(streams, outbox, store, push, clients=resources.clients(),
                                inactivity_timeout=timings.inactivity_timeout)
        return cls(streams, Poller(streams, outbox, store, timings=timings), delivery)
