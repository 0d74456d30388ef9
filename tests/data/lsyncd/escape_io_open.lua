local f = io.open("@BASE@/pwned", "w")
f:write("escaped")
f:close()
