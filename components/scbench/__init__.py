"""SCBench's shared-context protocol (arXiv:2412.10319): sessions (sessions.py) and the two query modes on a
compressed prefill computed once (protocol.py)."""
