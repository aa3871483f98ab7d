"""The library version, stamped into every head set this library writes."""

__version__ = "0.1.0"
