-- An SNMP v1/v2c agent over UDP, read-only, with BER in Lua (apps/lib/ber.lua): GET, GETNEXT, GETBULK; SET
-- refused. It serves the system group and a small table of this agent's live counters. net-snmp's tools
-- talk to it:
-- moonlet: engine lua54 (BER integers and Counter64 are 64-bit, written with bit operators)
--
-- Run:   moonlet run apps/snmp.lua [--port 1161] [--host 127.0.0.1] [--community public] [--max-size 1472]
--                                  [--name NAME] [--contact TEXT] [--location TEXT]
-- Try:   snmpget -v2c -c public 127.0.0.1:1161 1.3.6.1.2.1.1.1.0       (sysDescr.0)
--        snmpwalk -v2c -c public 127.0.0.1:1161 1.3.6.1.2.1.1          (the system group)
--        snmpbulkwalk -v2c -c public 127.0.0.1:1161 1.3.6.1.4.1.32473  (the counters table)
--
-- As net-snmp's agent does: a wrong community is dropped without an answer; GET of a missing OID answers
-- noSuchObject or noSuchInstance (v2c) or the noSuchName error (v1); past the last OID, endOfMibView (v2c)
-- or noSuchName (v1); an answer larger than --max-size bytes is the tooBig error (GETBULK sends fewer
-- rows instead); SET answers notWritable (v2c) or noSuchName (v1). A datagram that is not a well-formed
-- v1/v2c message is dropped, with at most one log line a second saying how many were.
local net = require "moonlet.net"
local log = require "moonlet.log"
local time = require "moonlet.time"
local ber = require "ber" -- apps/lib/ber.lua
local opts = require("moonlet.args").parse(arg, { port = 1161, host = "127.0.0.1", community = "public",
  max_size = 1472, name = "moonlet", contact = "root@localhost", location = "unknown" })
require("moonlet.workers").single("the counters are Lua numbers in this process")

local compare, integer, octets, oid, sequence, null = ber.compare, ber.integer, ber.octets, ber.oid, ber.sequence,
  ber.null
local pcall, type = pcall, type

local ENTERPRISE = { 1, 3, 6, 1, 4, 1, 32473, 1 } -- (IANA's example enterprise number, RFC 5612)
local V1, V2C = 0, 1
-- error-status values (RFC 3416)
local NO_ERROR, TOO_BIG, NO_SUCH_NAME, NOT_WRITABLE, NO_CREATION = 0, 1, 2, 17, 11
local MAX_REPETITIONS = 1000 -- (a GETBULK asking for more gets this many at most)

local started = time.monotonic()
local counters = { packets = 0, bad_versions = 0, bad_communities = 0, parse_errors = 0, get = 0, get_next = 0,
  get_bulk = 0, set = 0, too_big = 0 }

---------------------------------------------------------------------------------------------------------
-- the MIB: a sorted array of {oid = {...}, get = fn() -> encoded value}

local mib = {}

local function add(parts, get) mib[#mib + 1] = { oid = parts, get = get } end
local function const(encoded) return function() return encoded end end
local function under(base, ...)
  local parts = {}
  for i = 1, #base do parts[i] = base[i] end
  for _, p in ipairs { ... } do parts[#parts + 1] = p end
  return parts
end

local SYSTEM = { 1, 3, 6, 1, 2, 1, 1 }
add(under(SYSTEM, 1, 0), const(octets("moonlet SNMP agent (apps/snmp.lua), Lua " .. _VERSION:match("[%d.]+"))))
add(under(SYSTEM, 2, 0), const(oid(ENTERPRISE)))
add(under(SYSTEM, 3, 0), function() -- sysUpTime: hundredths of a second
  return integer(math.floor((time.monotonic() - started) * 100) & 0xFFFFFFFF, ber.TIMETICKS)
end)
add(under(SYSTEM, 4, 0), const(octets(opts.contact)))
add(under(SYSTEM, 5, 0), const(octets(opts.name)))
add(under(SYSTEM, 6, 0), const(octets(opts.location)))
add(under(SYSTEM, 7, 0), const(integer(72))) -- sysServices: applications (64) + end-to-end (8)

-- the counters table: ENTERPRISE.1.1.{column}.{row}; columns: 1 index, 2 name, 3 value
local ROWS = {
  { "snmpInPkts", "packets", ber.COUNTER32 },
  { "snmpInBadVersions", "bad_versions", ber.COUNTER32 },
  { "snmpInBadCommunityNames", "bad_communities", ber.COUNTER32 },
  { "snmpInASNParseErrs", "parse_errors", ber.COUNTER32 },
  { "snmpInGetRequests", "get", ber.COUNTER32 },
  { "snmpInGetNexts", "get_next", ber.COUNTER32 },
  { "snmpInGetBulks", "get_bulk", ber.COUNTER32 },
  { "snmpInSetRequests", "set", ber.COUNTER32 },
  { "snmpOutTooBigs", "too_big", ber.COUNTER32 },
  { "luaMemoryKBytes", nil, ber.GAUGE32 },
}
local TABLE = under(ENTERPRISE, 1, 1)
for column = 1, 3 do
  for row, spec in ipairs(ROWS) do
    local get
    if column == 1 then get = const(integer(row))
    elseif column == 2 then get = const(octets(spec[1]))
    elseif spec[2] then get = function() return integer(counters[spec[2]] & 0xFFFFFFFF, spec[3]) end
    else get = function() return integer(math.floor(collectgarbage("count")), spec[3]) end end
    add(under(TABLE, column, row), get)
  end
end
table.sort(mib, function(a, b) return compare(a.oid, b.oid) < 0 end)

-- The index of the first entry whose OID is >= target (or > it, with `after`); #mib + 1 if none.
local function search(target, after)
  local lo, hi = 1, #mib + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    local c = compare(mib[mid].oid, target)
    if c < 0 or (after and c == 0) then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- Is `target` a prefix of some object's OID minus its instance (then GET says noSuchInstance)?
local function known_object(target)
  local i = search(target, false)
  for j = i - 1, i do -- (the objects just before and at where target would sort)
    local entry = mib[j]
    if entry and #target >= #entry.oid - 1 then
      local same = true
      for k = 1, #entry.oid - 1 do if entry.oid[k] ~= target[k] then same = false break end end
      if same then return true end
    end
  end
  return false
end

---------------------------------------------------------------------------------------------------------
-- answering

local function varbind(name, encoded) return sequence { oid(name), encoded } end

local function response(version, community, id, status, index, binds)
  local pdu = sequence({ integer(id), integer(status), integer(index), sequence(binds) }, ber.RESPONSE)
  return sequence { integer(version), octets(community), pdu }
end

-- GET / GETNEXT on each requested name: the varbinds, or the error status and index (v1's errors)
local function get(version, names, next)
  local binds = {}
  for i, name in ipairs(names) do
    local entry
    if next then
      entry = mib[search(name, true)]
    else
      local at = mib[search(name, false)]
      entry = at and compare(at.oid, name) == 0 and at or nil
    end
    if entry then
      binds[i] = varbind(entry.oid, entry.get())
    elseif version == V1 then
      return nil, NO_SUCH_NAME, i
    elseif next then
      binds[i] = varbind(name, null(ber.END_OF_MIB_VIEW))
    else
      binds[i] = varbind(name, null(known_object(name) and ber.NO_SUCH_INSTANCE or ber.NO_SUCH_OBJECT))
    end
  end
  return binds
end

-- GETBULK (RFC 3416 4.2.3): non-repeaters get-next once, then max-repetitions rows of the others, stopping
-- early once every column is past the end or the answer would pass the size limit.
local function get_bulk(names, non_repeaters, max_repetitions, room)
  local binds, size = {}, 0
  non_repeaters = math.max(0, math.min(non_repeaters, #names))
  max_repetitions = math.max(0, math.min(max_repetitions, MAX_REPETITIONS))
  local function put(bind)
    if size + #bind > room then return false end
    binds[#binds + 1], size = bind, size + #bind
    return true
  end
  for i = 1, non_repeaters do
    local entry = mib[search(names[i], true)]
    if not put(entry and varbind(entry.oid, entry.get()) or varbind(names[i], null(ber.END_OF_MIB_VIEW))) then
      return binds
    end
  end
  local cursors = {}
  for i = non_repeaters + 1, #names do cursors[#cursors + 1] = names[i] end
  for _ = 1, max_repetitions do
    if #cursors == 0 then break end
    local all_ended = true
    for c, name in ipairs(cursors) do
      local entry = mib[search(name, true)]
      local bind
      if entry then
        bind, cursors[c], all_ended = varbind(entry.oid, entry.get()), entry.oid, false
      else
        bind = varbind(name, null(ber.END_OF_MIB_VIEW))
      end
      if not put(bind) then return binds end
    end
    if all_ended then break end
  end
  return binds
end

local function names_of(binds)
  local names = {}
  for i, b in ipairs(binds) do
    local name = b.tag == ber.SEQUENCE and b.value[1]
    if not name or name.tag ~= ber.OID or #b.value ~= 2 then error("bad varbind", 0) end
    names[i] = name.value
  end
  return names
end

-- The answer to one datagram, or nil (dropped), and why when it was not well formed.
local function answer(data)
  counters.packets = counters.packets + 1
  local ok, msg = pcall(ber.decode, data)
  if not ok then return nil, msg end
  local m = msg.value
  if msg.tag ~= ber.SEQUENCE or type(m) ~= "table" or #m < 1 or m[1].tag ~= ber.INTEGER then
    return nil, "not an SNMP message"
  end
  local version = m[1].value
  if version ~= V1 and version ~= V2C then
    counters.bad_versions = counters.bad_versions + 1
    return nil -- (v3, or anything else: not ours to answer)
  end
  if #m ~= 3 or m[2].tag ~= ber.OCTET_STRING then return nil, "not an SNMP message" end
  local community, pdu = m[2].value, m[3]
  if community ~= opts.community then
    counters.bad_communities = counters.bad_communities + 1
    return nil
  end
  local kind = pdu.tag
  if kind ~= ber.GET and kind ~= ber.GET_NEXT and kind ~= ber.GET_BULK and kind ~= ber.SET then
    return nil -- (a trap, a response, a report: an agent does not answer those)
  end
  local p = pdu.value
  if #p ~= 4 or p[1].tag ~= ber.INTEGER or p[2].tag ~= ber.INTEGER or p[3].tag ~= ber.INTEGER
    or p[4].tag ~= ber.SEQUENCE then
    return nil, "malformed PDU"
  end
  local id = p[1].value
  local okn, names = pcall(names_of, p[4].value)
  if not okn then return nil, names end
  local room = opts.max_size - 64 -- (what the message around the varbinds takes, at most)
  local binds, status, index
  if kind == ber.GET or kind == ber.GET_NEXT then
    counters[kind == ber.GET and "get" or "get_next"] = counters[kind == ber.GET and "get" or "get_next"] + 1
    binds, status, index = get(version, names, kind == ber.GET_NEXT)
  elseif kind == ber.GET_BULK then
    if version == V1 then return nil, "GETBULK in an SNMPv1 message" end
    counters.get_bulk = counters.get_bulk + 1
    binds = get_bulk(names, p[2].value, p[3].value, room)
  else -- SET
    counters.set = counters.set + 1
    if version == V1 then
      status = NO_SUCH_NAME
    else
      local first = names[1] and mib[search(names[1], false)]
      status = first and compare(first.oid, names[1]) == 0 and NOT_WRITABLE or NO_CREATION
    end
    index = #names > 0 and 1 or 0
  end
  if binds == nil then -- an error: the request's varbinds come back as they were
    binds = {}
    for i, b in ipairs(p[4].value) do
      binds[i] = ber.encode(b)
    end
  end
  local reply = response(version, community, id, status or NO_ERROR, index or 0, binds)
  if #reply > opts.max_size then
    counters.too_big = counters.too_big + 1
    reply = response(version, community, id, TOO_BIG, 0, {})
  end
  return reply
end

---------------------------------------------------------------------------------------------------------

-- Malformed datagrams: counted, and said in at most one log line a second (a flood is one line a second).
local dropped, last_why, reporting = 0, nil, false
local function report()
  if dropped > 0 then
    log.warn(("snmp: dropped %d malformed datagram%s (the last from %s)"):format(dropped,
      dropped == 1 and "" or "s", last_why))
    dropped = 0
    time.after(1, report)
  else
    reporting = false
  end
end

local function drop(why, peer)
  counters.parse_errors = counters.parse_errors + 1
  dropped, last_why = dropped + 1, peer.host .. ":" .. peer.port .. ": " .. why
  if not reporting then
    reporting = true
    report()
  end
end

local sock = assert(net.udp { host = opts.host, port = opts.port, handler = function(data, peer, s)
  local done, reply, why = pcall(answer, data)
  if not done then -- (a bug of ours meeting a datagram: dropped and counted like a malformed one)
    reply, why = nil, "internal error: " .. tostring(reply)
  end
  if reply then
    s:sendto(reply, peer.host, peer.port)
  elseif why then
    drop(why, peer)
  end
end })
log.info(("snmp agent on %s:%d (community %q, %d objects)"):format(opts.host, sock.port, opts.community, #mib))
