"""Built-in backends, one package each: ``<name>/__init__.py`` holds the declaration (no torch),
``<name>/kernel.py`` the adapter that runs the kernel (imports torch)."""
