-- The stdlib's own Lua tests (run with: moonlet test stdlib_lua/tests).
local t = require "moonlet.testing"
local json = require "moonlet.json"
local describe, it, expect = t.describe, t.it, t.expect

describe("moonlet.json", function()
  it("round-trips values", function()
    local v = { 1, "two", { three = 3, list = { true, false } }, json.null }
    expect(json.decode(json.encode(v))).to_equal(v)
  end)
  it("encodes objects with sorted keys and escapes", function()
    expect(json.encode({ b = 1, a = "x\n\"" })).to_be('{"a":"x\\n\\"","b":1}')
  end)
  it("decodes unicode escapes and surrogate pairs", function()
    expect(json.decode('"\\u00e9\\ud83d\\ude00"')).to_be("é😀")
  end)
  it("reports where bad JSON breaks", function()
    local v, err = json.decode('{"a": [1, 2,, 3]}')
    expect(v).to_be_nil()
    expect(err).to_match("at byte 13")
  end)
  it("refuses what JSON cannot hold", function()
    expect(function() json.encode({ f = print }) end).to_fail("cannot encode a function")
  end)
end)
