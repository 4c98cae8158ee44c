"""Services own the requests of one area each (streams, clock, pools, db, ...) and register them with the
kernel.

What the host asks of every service (``Service``), so that it is a loop over services rather than a list of
special cases:

* ``keeps_alive()``: whether the process must go on for this service (a listener, a pending timer, a UDP
  socket that serves): an app with none of these and no task left has finished.
* ``drain()``: SIGTERM: take no new work, let what runs finish (a listener stops accepting, timers stop).
* ``close()``: the end: release everything the service holds (awaited, in the order the host lists them).
* ``statistics()``: a few counters by name (the console's ``\\stats`` shows every service's).
* ``console_rows(topic)``: the lines this service adds to a console listing (``"connections"``,
  ``"tasks"``, ``"pools"``), each starting with an id ``\\kill`` takes where it has one.
* ``kill(row_id)``: the console's ``\\kill``: end the thing one of its rows names by that id; what it
  ended, in words, or None when the id is not one of this service's.
* ``reopen()``: SIGUSR1 (logrotate's convention): reopen the files it writes (the access logs).
* ``bind(lua)``: the main Lua state, once it is built: replies that are tables are made in it.
* ``in_flight()``: work a task waits for runs outside the loop (a pool job, a query, a connect): the
  jumping clock of ``moonlet test`` must not jump past it.
* ``waits_on_io()``: a task waits for a peer in another process (bytes on a connection, a datagram): the
  jumping clock gives it a moment of real time first.

``Defaults`` holds the answers of a service that has none of these (no Lua replies, nothing off the loop,
no peers, nothing to kill or reopen); ``Quiet`` adds the lifecycle of one that holds nothing.
``tests/test_services.py`` runs every service of ``Services`` through the contract, and finds any service
class that is not in it.
"""

from __future__ import annotations

from typing import Any, Protocol


class Service(Protocol):
    def keeps_alive(self) -> bool: ...

    def drain(self) -> None: ...

    async def close(self) -> None: ...

    def statistics(self) -> dict[str, int | float]: ...

    def console_rows(self, topic: str) -> list[str]: ...

    def kill(self, row_id: str) -> str | None: ...

    def reopen(self) -> None: ...

    def bind(self, lua: Any) -> None: ...

    def in_flight(self) -> bool: ...

    def waits_on_io(self) -> bool: ...


class Defaults:
    """The contract's answers for a service with no Lua replies, no work off the loop, no peers and no rows
    to kill."""

    lua: Any = None  # the main Lua state, to build replies in (``bind``)

    def bind(self, lua: Any) -> None:
        self.lua = lua

    def in_flight(self) -> bool:
        return False

    def waits_on_io(self) -> bool:
        return False

    def kill(self, row_id: str) -> str | None:
        return None

    def reopen(self) -> None:
        pass


class Quiet(Defaults):
    """The lifecycle of a service that holds nothing of its own: never keeps the process alive."""

    def keeps_alive(self) -> bool:
        return False

    def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def statistics(self) -> dict[str, int | float]:
        return {}

    def console_rows(self, topic: str) -> list[str]:
        return []


__all__ = ["Defaults", "Quiet", "Service"]
