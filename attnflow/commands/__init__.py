"""Feature command modules: each may define ``register(app)`` to add commands to the ``attnflow`` CLI."""
