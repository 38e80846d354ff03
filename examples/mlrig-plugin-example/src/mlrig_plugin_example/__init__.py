"""An example mlrig plugin: a storage backend and a hook implementation."""
