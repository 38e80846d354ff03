"""The ``features-materialize`` trainer (placeholder: being written)."""
