-- luacheck configuration for the stdlib and the example apps
std = "lua54"
max_line_length = 120
files["apps/"] = { read_globals = { "arg", "sleep", "spawn" } }
files["bench/lua/"] = { read_globals = { "arg", "sleep", "spawn" } }
files["stdlib_lua/moonlet/_bootstrap.lua"] = { globals = { "_G" } }
files["tests/lua/"] = { read_globals = { "sleep", "spawn" }, ignore = { "21", "311", "421" } } -- (Lua on purpose)
