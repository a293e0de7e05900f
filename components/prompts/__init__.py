"""Prompting methods applied to benchmark rows before tokenisation (family ``prompt``)."""
