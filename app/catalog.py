"""The task catalog: the decorators teams use in task modules, and lookup and argument checks by task name."""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from typing import Any, Callable

from huey.api import PeriodicTask, TaskWrapper

import config
from app.queue import get_huey

_loaded = False


class UnknownTaskName(LookupError):
    pass


class BadArguments(ValueError):
    pass


class TaskModuleError(ImportError):
    """A module named by NIGHTSHIFT_TASK_MODULES cannot be imported."""


def _registering(decorator: Callable[[Callable], TaskWrapper]) -> Callable[[Callable], TaskWrapper]:
    def register(func: Callable) -> TaskWrapper:
        wrapper = decorator(func)
        wrapper.task_class.func = staticmethod(wrapper.func)
        return wrapper
    return register


def task(**options: Any) -> Callable[[Callable], TaskWrapper]:
    """Register a task. Takes Huey's options (retries, retry_delay, retry_backoff, timeout, priority, expires,
    context, name) and `store_result=True` for tasks whose return value someone reads."""
    options.setdefault("store_result", False)
    return _registering(get_huey().task(**options))


def periodic_task(validate_datetime: Callable, **options: Any) -> Callable[[Callable], TaskWrapper]:
    """Register a task that the scheduler enqueues whenever `validate_datetime` (e.g. huey's crontab) matches."""
    options.setdefault("store_result", False)
    register = _registering(get_huey().periodic_task(validate_datetime, **options))

    def keep_schedule(func: Callable) -> TaskWrapper:
        wrapper = register(func)
        wrapper.task_class.periodic_schedule = staticmethod(validate_datetime)  # shown by `nightshift schedule`
        return wrapper
    return keep_schedule


def load_task_modules(modules: tuple[str, ...] | None = None) -> None:
    """Import the modules named by NIGHTSHIFT_TASK_MODULES so their tasks register (after Nightshift's own
    built-in periodic tasks: cleanup and backlog watch)."""
    global _loaded
    if _loaded and modules is None:
        return
    importlib.import_module("app.builtin_tasks")
    for name in modules or config.get().task_modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise TaskModuleError(f"cannot import task module {name!r} named by NIGHTSHIFT_TASK_MODULES: {exc}; "
                                  f"check the name and that the module is on the Python path") from exc
    _loaded = True


def task_classes() -> dict[str, type]:
    load_task_modules()
    return dict(get_huey()._registry._registry)


def get_task_class(name: str) -> type:
    classes = task_classes()
    if name in classes:
        return classes[name]
    close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; run `nightshift tasks` to list them"
    raise UnknownTaskName(f"unknown task {name!r}{hint}")


@functools.lru_cache(maxsize=None)
def signature_of(task_class: type) -> inspect.Signature:
    sig = inspect.signature(task_class.func)
    if getattr(task_class, "context", False):
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "task"])
    return sig


def bind_arguments(task_class: type, args: tuple, kwargs: dict) -> dict:
    """Arguments as keyword arguments, checked against the task's signature (missing or unexpected ones)."""
    sig = signature_of(task_class)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        params = ", ".join(str(p) for p in sig.parameters.values()) or "no arguments"
        raise BadArguments(f"{task_class.__name__}: {exc}; it takes ({params})") from None
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return dict(kwargs, **({"args": list(args)} if args else {}))
    result = dict(bound.arguments)
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD and p.name in result:
            result.update(result.pop(p.name))
    return result


def describe_parameter(p: inspect.Parameter) -> str:
    text = p.name
    if p.annotation is not p.empty:
        text += f": {p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, '__name__', p.annotation)}"
    if p.default is not p.empty:
        text += f" = {p.default!r}"
    return text


def describe(task_class: type) -> dict:
    """A task's catalog entry: name, parameters, first docstring line and Huey options."""
    sig = signature_of(task_class)
    doc = (task_class.func.__doc__ or "").strip().splitlines()
    return {
        "name": task_class.__name__,
        "module": task_class.__module__,
        "parameters": [describe_parameter(p) for p in sig.parameters.values()],
        "doc": doc[0] if doc else "",
        "retries": task_class.default_retries,
        "retry_delay": task_class.default_retry_delay,
        "timeout": task_class.default_timeout,
        "priority": task_class.default_priority,
        "periodic": issubclass(task_class, PeriodicTask),
        "store_result": bool(getattr(task_class, "store_result", False)),
    }
