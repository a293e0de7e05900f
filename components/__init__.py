"""attnflow components: one method = one file, a small validated dataclass registered with ``@register``.

Families: ``patches/`` (attention edits), ``benchmarks/`` (evaluation tasks), and later ``analyzers/``,
``detectors/``, ``kernels/``. This package imports nothing heavy; ``registry.discover()`` imports the modules.
"""
