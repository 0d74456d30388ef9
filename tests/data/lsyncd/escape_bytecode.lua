-- A precompiled chunk: Lua bytecode can break the VM, so load must refuse it.
local f = load("\27LuaS\0\25\147\r\n\26\n\4\8\4\8\8xV\0\0\0\0\0\0\0\0\0\0\0(w@")
f()
