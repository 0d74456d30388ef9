local o = require("os")
o.execute("touch @BASE@/pwned")
