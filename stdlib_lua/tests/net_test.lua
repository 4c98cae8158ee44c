-- The stdlib's own Lua tests: real sockets inside a test.
local t = require "moonlet.testing"
local net = require "moonlet.net"
local http = require "moonlet.http"
local describe, it, expect = t.describe, t.it, t.expect

describe("moonlet.net", function()
  local server
  t.before_each(function()
    server = assert(net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
      local line = conn:readline()
      conn:write(line:upper(), "\n")
    end })
  end)
  t.after_each(function() server:close() end)

  it("connects to a listener on an ephemeral port", function()
    local c = assert(net.connect("127.0.0.1", server.port))
    c:write("hello\n")
    expect(c:readline()).to_be("HELLO")
    c:close()
  end)
  it("says a refused connection is refused", function()
    local c, err = net.connect("127.0.0.1", 1)
    expect(c).to_be_nil()
    expect(err).to_be("connection refused")
  end)
end)

describe("moonlet.http", function()
  it("serves and calls itself", function()
    local s = assert(http.serve { port = 0, handler = function(req) return 200, nil, "hi " .. req.path end })
    local res = assert(http.get("http://127.0.0.1:" .. s.port .. "/there"))
    expect(res.status).to_be(200)
    expect(res.body).to_be("hi /there")
  end)
end)
