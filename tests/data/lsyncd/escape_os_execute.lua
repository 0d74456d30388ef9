os.execute("touch @BASE@/pwned")
sync { default.rsync, source = "@BASE@/src", target = "@BASE@/dst" }
