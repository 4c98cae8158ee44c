"""Every service through the one contract the host, the jumping clock and the console rely on
(runtime/services/__init__.py), as trio's ``check_two_way_stream`` runs any stream through one test: a new
service that forgets a method, or is made but not listed in ``Services``, fails here, not in production."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

import runtime.services
from runtime.config import Limits
from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op
from runtime.lua.state import new_lua_runtime
from runtime.services import Defaults, Service
from runtime.services.background import Background
from runtime.services.registry import Services, wire_services

TOPICS = ("connections", "tasks", "pools", "no such topic")


@pytest.fixture
def services(tmp_path) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        kernel = Kernel(loop.call_soon)
        limits = Limits(db_path=str(tmp_path / "contract.db"))
        yield wire_services(kernel, loop, limits, app_path=str(tmp_path / "app.lua"))
    finally:
        loop.close()


def test_every_service_keeps_the_contract(services: Services) -> None:
    lua = new_lua_runtime(64 * 1024 * 1024)
    listed = services.all()
    assert {type(s) for s in listed} == {
        type(getattr(services, f.name)) for f in dataclasses.fields(services)
    }
    for service in listed:
        name = type(service).__name__
        assert isinstance(service.keeps_alive(), bool), name
        assert service.keeps_alive() is False, name  # (nothing is open yet)
        assert service.in_flight() is False and service.waits_on_io() is False, name
        stats = service.statistics()
        assert all(isinstance(k, str) and isinstance(v, int | float) for k, v in stats.items()), name
        for topic in TOPICS:
            rows = service.console_rows(topic)
            assert isinstance(rows, list) and all(isinstance(r, str) for r in rows), (name, topic)
        assert service.kill("0") is None, name  # (no row has that id)
        service.bind(lua)
        assert service.lua is lua, name  # type: ignore[attr-defined]
        assert inspect.iscoroutinefunction(service.close), name
    assert services.in_flight() is False and services.waits_on_io() is False
    for service in listed:  # the end, in the host's order
        service.drain()
    loop = asyncio.new_event_loop()
    try:
        for service in listed:
            loop.run_until_complete(service.close())
    finally:
        loop.close()


def test_every_service_class_is_made_and_listed_and_the_ops_are_shared_out(services: Services) -> None:
    classes = set()
    for info in pkgutil.iter_modules(runtime.services.__path__):
        module = importlib.import_module(f"runtime.services.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and hasattr(cls, "SERVES"):
                classes.add(cls)
    listed = {type(s) for s in services.all()}
    assert classes == listed, f"made but not listed, or listed but gone: {classes ^ listed}"
    served = [op for cls in classes for op in cls.SERVES]  # type: ignore[attr-defined]
    assert len(served) == len(set(served)), "an op served by two services"
    assert set(served) == set(Op) - {Op.EXIT, Op.RELEASE}  # (the kernel's own)


def test_a_service_that_works_off_the_loop_says_so(services: Services) -> None:
    """A service that starts asyncio work for a task (its ``Background``) must answer ``in_flight`` from it,
    or the jumping clock jumps past work a task waits for (one sharing another's set is covered by it)."""
    seen: dict[int, str] = {}
    for service in services.all():
        background = getattr(service, "background", None)
        if not isinstance(background, Background) or id(background) in seen:
            continue
        seen[id(background)] = type(service).__name__
        assert type(service).in_flight is not Defaults.in_flight, type(service).__name__


def test_the_contract_is_a_protocol_every_listed_service_satisfies(services: Services) -> None:
    wanted = {name for name, _ in inspect.getmembers(Service, inspect.isfunction)}
    assert {"bind", "in_flight", "waits_on_io", "keeps_alive", "drain", "close", "kill"} <= wanted
    for service in services.all():
        missing = [m for m in wanted if not callable(getattr(service, m, None))]
        assert missing == [], (type(service).__name__, missing)
