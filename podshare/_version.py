"""The package version, read by hatchling and by ``podshare.__version__``."""

__version__ = "0.2.0"
