"""backdoorlab: find, understand and remove backdoors in language models."""

__version__ = "0.1.0"
