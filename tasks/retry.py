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
#: libraries whose errors a task retry would only repeat: the Hugging Face hub unreachable, offline or refusing
#: (huggingface_hub has retried network errors and 5xx answers itself, 5 times with backoff; HF_HUB_OFFLINE does not
#: change during a run) and unreadable safetensors files
_NO_RETRY_MODULES = ("huggingface_hub", "httpx2", "safetensors")


def is_deterministic(exc: BaseException) -> bool:
    """True for errors that a retry would only repeat."""
    from components.numerics import NonFiniteLogitsError

    if isinstance(exc, (*DETERMINISTIC, NonFiniteLogitsError)):
        return True
    return any(c.__module__.split(".")[0] in _NO_RETRY_MODULES for c in type(exc).__mro__)


def transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when its error may be transient."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classify whatever the task raised
        return not is_deterministic(e)
    return True
