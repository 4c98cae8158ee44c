"""Per-coroutine state kept by the host."""

from __future__ import annotations

from typing import Protocol

from runtime.lua.state import LuaThread


class Owner(Protocol):
    """Whoever started a task and must hear when it ends (a connection, the app's main chunk)."""

    def describe(self) -> str: ...

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None: ...


class Task:
    """One Lua coroutine run by the kernel.

    ``co`` is ``None`` once the task has ended or been killed: cancellation is host state, so a killed
    coroutine is simply never resumed again (no exception is thrown through Lua, where ``pcall`` would
    swallow it).
    """

    __slots__ = ("co", "owner")

    def __init__(self, co: LuaThread, owner: Owner) -> None:
        self.co: LuaThread | None = co
        self.owner = owner

    @property
    def alive(self) -> bool:
        return self.co is not None

    def describe(self) -> str:
        return self.owner.describe()
