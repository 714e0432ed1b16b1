"""thelca: an auditable item store driven by commands over RabbitMQ."""

__version__ = "0.1.0"
