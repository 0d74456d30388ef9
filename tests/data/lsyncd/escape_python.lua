-- lupa can expose Python to Lua; the sandbox must not.
local p = python or _G.python
p.eval("__import__('os').system('touch @BASE@/pwned')")
