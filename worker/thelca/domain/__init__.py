"""The domain: items, the events that record what happened to them, and the service."""
