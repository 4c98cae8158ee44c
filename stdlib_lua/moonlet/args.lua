--- Command-line options for apps: `moonlet run app.lua --port 7000 --verbose`.
-- @module moonlet.args
local type, error, tonumber, tostring, pairs = type, error, tonumber, tostring, pairs
local sort, concat = table.sort, table.concat

local M = {}

local function known(defaults)
  local names = {}
  for name in pairs(defaults) do names[#names + 1] = "--" .. name:gsub("_", "-") end
  sort(names)
  return concat(names, ", ")
end

--- Parse `--name value`, `--name=value` and `--flag` from `argv` (normally the global `arg`).
--- `defaults` names every accepted option and gives its type: a number option must be given a number, a
--- boolean option is a flag (`--name`, `--name=false`, `--name false`;
--- `--no-name` turns it off). Dashes in names become underscores. Words that are
--- not options are returned in order as the array part of the result. Never yields.
--- Raises a clear error for an unknown option or a bad value.
--- Example: `local opts = args.parse(arg, { port = 6380, host = "127.0.0.1", verbose = false })`
---@param argv string[]
---@param defaults table<string, string|number|boolean>
---@return table options
function M.parse(argv, defaults)
  if type(argv) ~= "table" then error("bad argument #1 to 'parse' (table expected)", 2) end
  defaults = defaults or {}
  local result = {}
  for name, value in pairs(defaults) do result[name] = value end
  local i = 1
  while argv[i] ~= nil do
    local word = argv[i]
    local name, value = word:match("^%-%-([%w%-_]+)=(.*)$")
    if not name then name = word:match("^%-%-([%w%-_]+)$") end
    if not name then
      result[#result + 1] = word
    else
      local key = name:gsub("%-", "_")
      local negated = false
      if defaults[key] == nil and key:sub(1, 3) == "no_" and type(defaults[key:sub(4)]) == "boolean" then
        key, negated = key:sub(4), true
      end
      local default = defaults[key]
      if default == nil then
        error("unknown option --" .. name .. " (options: " .. known(defaults) .. ")", 2)
      elseif type(default) == "boolean" then
        -- `--flag`, `--flag=true|false` and `--flag true|false` (the word after it, when it is one of those)
        if value == nil and (argv[i + 1] == "true" or argv[i + 1] == "false") then
          i = i + 1
          value = argv[i]
        end
        local on = true
        if value ~= nil then
          if value ~= "true" and value ~= "false" then
            error("option --" .. name .. " is a flag: true or false, got '" .. tostring(value) .. "'", 2)
          end
          on = value == "true"
        end
        if negated then on = not on end
        result[key] = on
      else
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then error("option --" .. name .. " needs a value", 2) end
        end
        if type(default) == "number" then
          local n = tonumber(value)
          if n == nil then error("option --" .. name .. " needs a number, got '" .. tostring(value) .. "'", 2) end
          value = n
        end
        result[key] = value
      end
    end
    i = i + 1
  end
  return result
end

return M
