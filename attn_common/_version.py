"""The version of the attn-parity distribution; pyproject.toml reads it from here."""

__version__ = "0.1.0"
