"""Which task failures are worth a retry: transient ones (a tracking server that went away, a flaky disk), never
deterministic ones (bad input, a missing file, an unreachable or offline model hub), which would only fail again
after the retry delays and bury the message under repeated tracebacks.

Every task with ``retries`` passes ``retry_condition_fn=transient`` (tests/unit/test_errors.py checks this).
"""

from __future__ import annotations

from typing import Any

#: exceptions that a second try cannot fix (ParamError, DataSourceError, SpecError and ModelNotFoundError are
#: ValueError / FileNotFoundError subclasses)
DETERMINISTIC: tuple[type[BaseException], ...] = (
    ValueError, TypeError, LookupError, AttributeError, NotImplementedError, ImportError, AssertionError,
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
)
#: libraries whose errors mean "the hub is unreachable, offline or refused": they retry on their own already
#: (huggingface_hub backs off 5 times on network errors) and HF_HUB_OFFLINE never changes during a run
_HUB_MODULES = ("huggingface_hub", "httpx2", "safetensors")


def is_deterministic(exc: BaseException) -> bool:
    """True for errors that a retry would only repeat."""
    from components.numerics import NonFiniteLogitsError

    if isinstance(exc, (*DETERMINISTIC, NonFiniteLogitsError)):
        return True
    return any(c.__module__.split(".")[0] in _HUB_MODULES for c in type(exc).__mro__)


def transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when its error may be transient."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classify whatever the task raised
        return not is_deterministic(e)
    return True
