"""Prometheus metrics of every thelca process, served when a metrics port is set.

Names follow Prometheus conventions (counters end in _total once exported);
labels stay few and bounded: role, command, status, exchange.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

COMMANDS = Counter("thelca_commands", "Commands answered, by command and reply status",
                   ["command", "status"])
DELIVERY_SECONDS = Histogram(
    "thelca_delivery_seconds", "From a message's delivery to its ack", ["role"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
BATCH_SIZE = Histogram("thelca_batch_size", "Deliveries handled in one store transaction",
                       ["role"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
PUBLISHED = Counter("thelca_published", "Messages published and confirmed by the broker",
                    ["role", "exchange"])
CONFIRMS_PENDING = Gauge("thelca_confirms_pending", "Publishes awaiting the broker's confirm",
                         ["role"])
CONSUMING = Gauge("thelca_consuming", "1 while the process consumes its queue", ["role"])
RECONNECTS = Counter("thelca_reconnects", "Connections to the broker lost", ["role"])
BATCH_RETRIES = Counter("thelca_batch_retries",
                        "Batches handled again because the previous attempt failed", ["role"])
BATCH_STUCK = Gauge("thelca_batch_stuck", "1 while the consumer has stopped consuming because "
                    "the same batch keeps failing", ["role"])
REPLIES_UNDELIVERABLE = Counter(
    "thelca_replies_undeliverable",
    "Messages to clients dropped because the broker closed the reply connection over them",
    ["role"])
DEDUP_WINDOW = Gauge(
    "thelca_dedup_window_seconds",
    "How long a processed command's record answers its message_id (THELCA_DEDUP_WINDOW)")
PROCESSED_PRUNED = Counter(
    "thelca_processed_pruned",
    "Processed-command records removed because they outlived the deduplication window")
DEAD_LETTERS = Counter("thelca_dead_letters", "Messages sent to the dead-letter exchange",
                       ["role"])
LOG_LINES = Counter("thelca_log_lines", "Event log lines written and fsynced")
LOG_DUPLICATES = Counter("thelca_log_duplicates",
                         "Events not written again because their id was written already")
LOG_REJECTED = Counter(
    "thelca_log_rejected",
    "Messages on the log's queue not written but dead-lettered, by reason: exchange (not "
    "published through <prefix>.events), publisher (a user_id not in THELCA_EVENT_PUBLISHERS), "
    "format (not a JSON object)", ["reason"])
LOG_CHECKPOINTS = Counter("thelca_log_checkpoints", "Checkpoints of the event log written")
AUTHORITY_KEYS = Gauge(
    "thelca_authority_keys",
    "Public keys the jwt Authority verifies tokens with; 0: every token is refused",
    ["source"])
FSYNC_SECONDS = Histogram(
    "thelca_log_fsync_seconds", "One flush and fsync of the event log",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))

def serve(port: int, host: str) -> None:
    """Serve /metrics on host:port from a background thread; port 0 means off."""
    if port:
        start_http_server(port, addr=host)
