"""The ``sql`` online store: the platform database (placeholder: being written)."""
