"""The ``redis`` online store (placeholder: being written)."""
