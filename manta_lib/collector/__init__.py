"""``manta collect``: an OTLP/HTTP and rollout receiver that keeps what it acknowledges (a
durable spool, :mod:`.spool`), serves HTTP (:mod:`.http`), prepares requests in worker
processes (:mod:`.prepare`) and writes the store (:mod:`.server`)."""

from manta_lib.collector.server import Collector

__all__ = ["Collector"]
