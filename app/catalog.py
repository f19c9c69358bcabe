"""The task catalog: the decorators teams use in task modules, and lookup and argument checks by task name."""
from __future__ import annotations

import functools
import importlib
import inspect
import traceback
import types
import typing
from typing import Any, Callable

from huey.api import PeriodicTask, TaskWrapper

from app import flow, schedule
from app.queue import check_queue_name, get_huey
from helpers.masking import quoted

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


def _route(options: dict) -> str | None:
    """The task's own queue (`queue="mail"`), checked at import; None: the service's queue (NIGHTSHIFT_QUEUE)."""
    queue = options.pop("queue", None)
    if queue is not None:
        try:
            check_queue_name(queue)
        except ValueError as exc:
            raise BadArguments(f"queue=: {exc}") from None
    return queue


def queue_of(task_class: type, service: str, queue: str | None = None) -> str:
    """Where a job of `task_class` goes: `queue` when the submitter chose one, else the task's declared queue,
    else the service's (`service`: NIGHTSHIFT_QUEUE)."""
    return queue or getattr(task_class, "queue", None) or service


def task(**options: Any) -> Callable[[Callable], TaskWrapper]:
    """Register a task. Takes Huey's options (retries, retry_delay, retry_backoff, timeout, priority, expires,
    context, name), `queue="mail"` (the queue its jobs go to unless a submitter chooses another; default
    NIGHTSHIFT_QUEUE), `store_result=True` for tasks whose return value someone reads, `lease=SECONDS` for a task
    that may block its worker (holding the GIL) longer than NIGHTSHIFT_LEASE_SECONDS, and the flow limits held
    across all consumers (app.flow): `rate_limit="5/s"`, `concurrency=N`, `concurrency_key="argument"`."""
    options.setdefault("store_result", False)
    options["queue"] = _route(options)
    register = _registering(get_huey().task(**options))

    def checked(func: Callable) -> TaskWrapper:
        flow.check_options(options, list(inspect.signature(func).parameters))
        return register(func)
    return checked


def periodic_task(validate_datetime: Callable, tz: str | None = None,
                  **options: Any) -> Callable[[Callable], TaskWrapper]:
    """Register a task that the scheduler enqueues whenever `validate_datetime` (e.g. `crontab(...)`) matches the
    wall clock of time zone `tz` (default NIGHTSHIFT_TIMEZONE, itself UTC by default), with cron's rules across
    daylight-saving changes (app.schedule.Zoned)."""
    options.setdefault("store_result", False)
    if tz is not None:
        schedule.zone(tz)  # an unknown zone fails at import, not at the first tick
    huey = get_huey()
    validate_datetime = schedule.Zoned(validate_datetime, tz, huey)
    options["queue"] = _route(options)
    register = _registering(huey.periodic_task(validate_datetime, **options))

    def keep_schedule(func: Callable) -> TaskWrapper:
        wrapper = register(func)
        wrapper.task_class.periodic_schedule = staticmethod(validate_datetime)  # shown by `nightshift schedule`
        return wrapper
    return keep_schedule


def load_task_modules(modules: tuple[str, ...] | None = None) -> None:
    """Import the task modules (`modules`, else the NIGHTSHIFT_TASK_MODULES of the Huey instance they register
    on) so their tasks register (after Nightshift's own built-in periodic tasks: cleanup and backlog watch)."""
    global _loaded
    if _loaded and modules is None:
        return
    importlib.import_module("app.builtin_tasks")
    for name in modules or get_huey().settings.task_modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not (name == exc.name or name.startswith(exc.name + ".")):
                raise TaskModuleError(f"task module {name!r} named by NIGHTSHIFT_TASK_MODULES failed to import "
                                      f"{exc.name!r} ({_where(exc, name)}): install it, or fix that import") from exc
            raise TaskModuleError(f"cannot import task module {name!r} named by NIGHTSHIFT_TASK_MODULES: {exc}; "
                                  f"check the name and that the module is on the Python path") from exc
        except Exception as exc:  # noqa: BLE001 - any error at import (a bad crontab, a typo) is the module's
            raise TaskModuleError(f"task module {name!r} named by NIGHTSHIFT_TASK_MODULES failed at import "
                                  f"({_where(exc, name)}): {type(exc).__name__}: {exc}") from exc
    _loaded = True


def _where(exc: BaseException, module: str) -> str:
    """file:line of the task module's own line that raised `exc` (the last frame in that module's file)."""
    frames = traceback.extract_tb(exc.__traceback__)
    stem = module.replace(".", "/")
    own = [f for f in frames if f.filename.endswith((f"{stem}.py", f"{stem}/__init__.py"))] or frames[-1:]
    return f"{own[-1].filename}:{own[-1].lineno}" if own else module


def task_classes() -> dict[str, type]:
    load_task_modules()
    return get_huey().registered()


def get_task_class(name: str) -> type:
    classes = task_classes()
    if name in classes:
        return classes[name]
    from difflib import get_close_matches  # only for a name that is wrong: 5 ms of every command's start-up
    close = get_close_matches(name, list(classes), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; run `nightshift tasks` to list them"
    raise UnknownTaskName(f"unknown task {name!r}{hint}")


@functools.lru_cache(maxsize=None)
def signature_of(task_class: type) -> inspect.Signature:
    sig = inspect.signature(task_class.func)
    if getattr(task_class, "context", False):
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "task"])
    return sig


@functools.lru_cache(maxsize=None)
def _keyword_shape(task_class: type) -> tuple[frozenset, frozenset] | None:
    """(parameter names, required ones) when every parameter can be passed by keyword and there is no *args or
    **kwargs; None otherwise (then Signature.bind decides)."""
    names, required = set(), set()
    for p in signature_of(task_class).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return None
        names.add(p.name)
        if p.default is p.empty:
            required.add(p.name)
    return frozenset(names), frozenset(required)


def bind_arguments(task_class: type, args: tuple, kwargs: dict) -> dict:
    """Arguments as keyword arguments, checked against the task's signature (missing or unexpected ones)."""
    shape = None if args else _keyword_shape(task_class)
    if shape is not None and kwargs.keys() <= shape[0] and shape[1] <= kwargs.keys():
        return dict(kwargs)  # the common case (bulk files), without Signature.bind's cost; errors take the path below
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


def describe(task_class: type, service: str) -> dict:
    """A task's catalog entry: name, parameters, first docstring line, Huey options and its queue (`service`,
    NIGHTSHIFT_QUEUE, unless it declares its own)."""
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
        "queue": queue_of(task_class, service),
    }


# -- simple type hints, checked at submit ------------------------------------------------------------------------

_SIMPLE = (bool, int, float, str, list, dict)


@functools.lru_cache(maxsize=None)
def type_hints(task_class: type) -> dict[str, tuple[type, ...] | None]:
    """Per parameter, the JSON types its hint accepts (int, float, str, bool, list, dict, None, and unions of
    them, generics by their origin); None for a hint that is not that simple (it is not checked)."""
    try:
        hints = typing.get_type_hints(task_class.func)
    except Exception:  # noqa: BLE001 - a hint that does not resolve is not checked
        return {}
    accepted: dict[str, tuple[type, ...] | None] = {}
    for name, hint in hints.items():
        parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = []
        for part in parts:
            part = typing.get_origin(part) or part
            if part is type(None) or part in _SIMPLE:
                kinds.append(part)
            else:
                kinds = None
                break
        accepted[name] = tuple(kinds) if kinds else None
    return accepted


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    for kind in kinds:
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in (str, list, dict) and isinstance(value, kind):
            return True
    return False


_FIT_AT_ONCE = {bool: {bool}, int: {int}, float: {int, float}, str: {str}, list: {list}, dict: {dict},
                type(None): {type(None)}}  # per kind, the exact types _fits accepts (JSON decodes to these)


@functools.lru_cache(maxsize=None)
def _type_checks(task_class: type) -> dict[str, tuple[frozenset, tuple[type, ...], bool]]:
    """Per parameter with a checked hint: (the exact types that fit at once, the hint's kinds, whether its
    default is None). Made once per task: a bulk submit checks every line."""
    parameters = signature_of(task_class).parameters
    checks = {}
    for name, kinds in type_hints(task_class).items():
        if kinds:
            at_once = frozenset().union(*(_FIT_AT_ONCE[kind] for kind in kinds))
            checks[name] = (at_once, kinds, name in parameters and parameters[name].default is None)
    return checks


def check_types(task_class: type, kwargs: dict) -> None:
    """Refuse a value its parameter's simple type hint does not accept (an int is fine for a float)."""
    checks = _type_checks(task_class)
    for name, value in kwargs.items():
        check = checks.get(name)
        if check is None or type(value) in check[0]:
            continue
        _, kinds, takes_none = check
        if value is None and takes_none:
            continue  # `x: str = None` takes None
        if not _fits(value, kinds):
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise BadArguments(f"{task_class.__name__}: argument {name!r} must be {wanted}, "
                               f"got {type(value).__name__} {quoted(value, 40)}")


def takes_text(task_class: type, name: str) -> bool:
    """Whether parameter `name` is hinted as a string (the CLI then keeps `--arg name=42` as the text "42")."""
    kinds = type_hints(task_class).get(name)
    return bool(kinds) and str in kinds and not set(kinds) - {str, type(None)}


def parameter_names(task_class: type) -> set[str]:
    """The task's named parameters (not *args/**kwargs)."""
    return {p.name for p in signature_of(task_class).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
