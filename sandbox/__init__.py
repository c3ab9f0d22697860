"""sbx: a rootless Linux sandbox for running untrusted code under hard limits."""

__version__ = "0.1.0"
