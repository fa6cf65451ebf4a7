"""The package version, in a module of its own: a module low in the layers (layout.py) can read it without
importing ``peftkit`` itself, whose ``load_run`` reaches up to run_dir (pyproject.toml, [tool.importlinter])."""

__version__ = "0.1.0"
