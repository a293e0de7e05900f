"""Prefect tasks: thin, typed wrappers (retries, caching, progress) around components and I/O."""

import infra.settings  # noqa: F401  (sets Prefect/attnflow environment defaults before Prefect reads them)
