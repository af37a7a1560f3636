"""The package version, in a leaf module so that code below the package's `__init__` can record it."""
__version__ = "0.1.0"
