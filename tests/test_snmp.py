"""apps/snmp.lua driven by net-snmp's own tools (Debian's `snmp` package): snmpget, snmpgetnext, snmpwalk,
snmpbulkwalk, snmpbulkget, snmpset; and garbage datagrams."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import APPS

pytestmark = pytest.mark.lua54("apps/snmp.lua declares Lua 5.4 (Counter64, bit operators)")

UDP_READY = re.compile(rb"serving udp on (\S+):(\d+)")
SYS = "1.3.6.1.2.1.1"
TABLE = "1.3.6.1.4.1.32473.1.1.1"


def snmp(tool: str, *args: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (tests/run.sh installs Debian's snmp package)")
    done = subprocess.run(
        [path, "-On", "-t", "2", "-r", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MIBS": "", "MIBDIRS": ""},  # numeric OIDs: no MIB files needed
    )
    return done.stdout + done.stderr


@pytest.fixture
def agent(run_app):  # type: ignore[no-untyped-def]
    options = ["--name", "box-1", "--location", "rack 4"]
    server = run_app(APPS / "snmp.lua", "--port", "0", *options, ready=UDP_READY)
    return server, f"127.0.0.1:{server.port}"


def test_get_getnext_and_the_v2c_exceptions(agent) -> None:  # type: ignore[no-untyped-def]
    _, where = agent
    v2c = ("-v2c", "-c", "public", where)
    out = snmp("snmpget", *v2c, f"{SYS}.1.0", f"{SYS}.5.0", f"{SYS}.6.0", f"{SYS}.7.0")
    assert f'.{SYS}.1.0 = STRING: "moonlet SNMP agent' in out
    assert f'.{SYS}.5.0 = STRING: "box-1"' in out and f'.{SYS}.6.0 = STRING: "rack 4"' in out
    assert f".{SYS}.7.0 = INTEGER: 72" in out
    out = snmp("snmpget", *v2c, f"{SYS}.2.0", f"{SYS}.3.0", f"{SYS}.9.0", f"{SYS}.1.7")
    assert f".{SYS}.2.0 = OID: .1.3.6.1.4.1.32473.1" in out
    assert re.search(rf"\.{SYS}\.3\.0 = Timeticks: \(\d+\)", out)
    assert f".{SYS}.9.0 = No Such Object available on this agent at this OID" in out
    assert f".{SYS}.1.7 = No Such Instance currently exists at this OID" in out
    out = snmp("snmpgetnext", "-v2c", "-c", "public", where, SYS, f"{SYS}.7.0", f"{TABLE}.3.10")
    assert f'.{SYS}.1.0 = STRING: "moonlet' in out
    assert f".{TABLE}.1.1 = INTEGER: 1" in out  # past the system group: the counters table
    assert f".{TABLE}.3.10 = No more variables left in this MIB View" in out


def test_every_legal_oid_is_answered_in_valid_ber(agent) -> None:  # type: ignore[no-untyped-def]
    """The first two arcs are one subidentifier, 40 * X + Y: for 2.100 that is 180 and for 2.999 it is 1079,
    both base-128 multi-byte (they were sent as one raw byte, and 2.999 crashed the handler)."""
    server, where = agent
    out = snmp("snmpget", "-v2c", "-c", "public", where, "2.999.1", "2.100.3", "1.3.6.1.2.1.1.1.0")
    assert ".2.999.1 = No Such Object available on this agent at this OID" in out, out
    assert ".2.100.3 = No Such Object available on this agent at this OID" in out, out
    assert " ERROR " not in server.log_text()


def test_v1_errors_are_nosuchname(agent) -> None:  # type: ignore[no-untyped-def]
    _, where = agent
    out = snmp("snmpget", "-v1", "-c", "public", where, f"{SYS}.1.0", f"{SYS}.9.0")
    assert "(noSuchName)" in out and f"Failed object: .{SYS}.9.0" in out
    out = snmp("snmpgetnext", "-v1", "-c", "public", where, f"{TABLE}.3.10")
    assert "(noSuchName)" in out
    out = snmp("snmpset", "-v1", "-c", "public", where, f"{SYS}.5.0", "s", "renamed")
    assert "(noSuchName)" in out


def test_walks_cover_the_whole_mib_in_order(agent) -> None:  # type: ignore[no-untyped-def]
    _, where = agent
    system = snmp("snmpwalk", "-v2c", "-c", "public", where, SYS).splitlines()
    assert [line.split(" = ")[0] for line in system] == [f".{SYS}.{i}.0" for i in range(1, 8)]
    assert snmp("snmpwalk", "-v1", "-c", "public", where, SYS).splitlines()[0].startswith(f".{SYS}.1.0")
    everything = snmp("snmpwalk", "-v2c", "-c", "public", where, ".1").splitlines()
    bulk = snmp("snmpbulkwalk", "-v2c", "-c", "public", "-Cr25", where, ".1").splitlines()
    assert "No more variables left in this MIB View (It is past the end of the MIB tree)" in everything[-1]
    names = [line.split(" = ")[0] for line in everything[:-1]]
    assert len(names) == 7 + 3 * 10 and names == [line.split(" = ")[0] for line in bulk[:-1]]
    table = [line for line in everything if line.startswith(f".{TABLE}.2.")]
    assert table[0].endswith('STRING: "snmpInPkts"') and table[-1].endswith('STRING: "luaMemoryKBytes"')
    counts = snmp("snmpget", "-v2c", "-c", "public", where, f"{TABLE}.3.1", f"{TABLE}.3.7")
    packets = int(re.search(rf"\.{TABLE}\.3\.1 = Counter32: (\d+)", counts).group(1))  # type: ignore[union-attr]
    bulks = int(re.search(rf"\.{TABLE}\.3\.7 = Counter32: (\d+)", counts).group(1))  # type: ignore[union-attr]
    assert packets > len(names) and bulks >= 2


def test_getbulk_non_repeaters_and_repetitions(agent) -> None:  # type: ignore[no-untyped-def]
    _, where = agent
    out = snmp("snmpbulkget", "-v2c", "-c", "public", "-Cn1", "-Cr3", where, SYS, f"{TABLE}.2.8")
    lines = out.splitlines()
    assert lines[0].startswith(f".{SYS}.1.0 = STRING")  # the non-repeater: once
    assert [line.split(" = ")[0] for line in lines[1:3]] == [f".{TABLE}.2.9", f".{TABLE}.2.10"]
    assert lines[3].startswith(f".{TABLE}.3.1 = Counter32")


def test_set_is_refused_and_a_wrong_community_gets_no_answer(agent) -> None:  # type: ignore[no-untyped-def]
    _, where = agent
    out = snmp("snmpset", "-v2c", "-c", "public", where, f"{SYS}.5.0", "s", "renamed")
    assert "notWritable" in out
    out = snmp("snmpset", "-v2c", "-c", "public", where, f"{SYS}.99.0", "s", "new")
    assert "noCreation" in out
    assert 'STRING: "box-1"' in snmp("snmpget", "-v2c", "-c", "public", where, f"{SYS}.5.0")
    out = snmp("snmpget", "-v2c", "-c", "private", "-t", "0.3", "-r", "0", where, f"{SYS}.5.0")
    assert "Timeout: No Response" in out


def test_an_answer_too_big_is_the_toobig_error(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "snmp.lua", "--port", "0", "--max-size", "200", ready=UDP_READY)
    where = f"127.0.0.1:{server.port}"
    out = snmp("snmpget", "-v2c", "-c", "public", where, *[f"{SYS}.1.0"] * 4)
    assert "tooBig" in out
    assert 'STRING: "moonlet' in snmp("snmpget", "-v2c", "-c", "public", where, f"{SYS}.1.0")
    bulk = snmp("snmpbulkget", "-v2c", "-c", "public", "-Cr50", where, SYS).splitlines()
    assert 1 <= len(bulk) < 50  # GETBULK sends fewer rows instead


def test_garbage_datagrams_are_dropped_counted_and_logged_once_a_second(agent) -> None:  # type: ignore[no-untyped-def]
    server, where = agent
    host, port = where.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in [b"", b"garbage", b"\x30\x82\xff\xff", b"\x30\x80\x00\x00", bytes(range(256))] * 40:
            s.sendto(junk, (host, int(port)))
        # a v3 message and a v2c trap are not ours to answer either (and not malformed)
        v3 = "3016020103300d020101020205dc04010402010304003000"
        trap = "301a02010104067075626c6963a70d02010102010002010030023000"
        for message in (v3, trap):
            s.sendto(bytes.fromhex(message), (host, int(port)))
    out = snmp("snmpget", "-v2c", "-c", "public", where, f"{TABLE}.3.4", f"{SYS}.5.0")
    assert f".{TABLE}.3.4 = Counter32: 200" in out and 'STRING: "box-1"' in out
    server.wait_log(re.compile(rb"snmp: dropped \d+ malformed datagrams? \(the last from 127\.0\.0\.1:\d+"))
    assert len(re.findall(rb"snmp: dropped", server.log_text().encode())) <= 3  # not one line each
