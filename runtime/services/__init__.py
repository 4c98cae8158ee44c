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
"""

from __future__ import annotations

from typing import Protocol


class Service(Protocol):
    def keeps_alive(self) -> bool: ...

    def drain(self) -> None: ...

    async def close(self) -> None: ...

    def statistics(self) -> dict[str, int | float]: ...

    def console_rows(self, topic: str) -> list[str]: ...


class Quiet:
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


__all__ = ["Quiet", "Service"]
