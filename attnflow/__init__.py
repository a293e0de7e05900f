"""attnflow: transformer-attention research methods as versioned, comparable, exportable components."""

__version__ = "0.1.0"
