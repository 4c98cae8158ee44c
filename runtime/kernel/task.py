"""Per-coroutine state kept by the host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from runtime.lua.state import LuaThread


class Owner(Protocol):
    """Whoever started a task and must hear when it ends (a connection, the main chunk, the task service)."""

    def describe(self) -> str: ...

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None: ...


class Waitable(Protocol):
    """Something a suspended task may be registered with; told to let go when the task is killed."""

    def forget(self, task: Task) -> None: ...


class Closable(Protocol):
    """Something a task owns and that is closed when the task ends (an outgoing connection)."""

    def close(self) -> None: ...


class _Parked:
    __slots__ = ()

    def forget(self, task: Task) -> None:
        pass

    def __repr__(self) -> str:
        return "PARKED"


PARKED = _Parked()  # Task.waiting while the task sleeps in PARK


class Extra:
    """What only spawned tasks and tasks with children need; kept apart so a connection stays small."""

    __slots__ = ("children", "name", "on_end", "owned", "result", "stall", "watchers")

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.children: set[Task] | None = None  # live tasks whose lifetime this task bounds
        self.result: tuple[bool, object] | None = None  # set when the task ends
        self.watchers: list[Task] | None = None  # tasks parked until this one ends
        self.stall: bytes | None = None  # traceback recorded when the stall hook stopped it
        self.on_end: list[Callable[[], None]] = []  # cleanups when it ends (a transaction to roll back)
        self.owned: dict[Closable, None] | None = None  # what closes when it ends (connections it opened)


class Task:
    """One Lua coroutine run by the kernel.

    ``co`` is ``None`` once the task has ended or been killed: cancellation is host state, so a killed
    coroutine is simply never resumed again (no exception is thrown through Lua, where ``pcall`` would
    swallow it). ``waiting`` and ``timer`` say what a suspended task is registered with, so that killing it
    also unregisters it. ``root`` is the task whose end cancels this one (a connection's handler), if any.
    ``runs`` counts its resumes: a wake-up put off to later carries the count it answers (see the kernel's
    rules), and the stall guard tells one run from another by the task and its count. ``handle``: the
    number Lua holds for it, 0 until it is given one (``kernel/handles.py``).
    """

    __slots__ = ("co", "extra", "handle", "owner", "root", "runs", "timer", "waiting")

    def __init__(self, co: LuaThread, owner: Owner) -> None:
        self.co: LuaThread | None = co
        self.owner = owner
        self.waiting: Waitable | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.root: Task | None = None
        self.extra: Extra | None = None
        self.runs = 0
        self.handle = 0

    @property
    def alive(self) -> bool:
        return self.co is not None

    def describe(self) -> str:
        extra = self.extra
        if extra is not None and extra.name is not None:
            return extra.name
        return self.owner.describe()
