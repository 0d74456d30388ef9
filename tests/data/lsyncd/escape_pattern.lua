-- Work inside one C call (no Lua instruction counted): a pattern that
-- backtracks for ages. Only the importer's process limits can stop it.
local s = string.rep("a", 100000)
string.find(s, ".-.-.-.-.-.-b")
