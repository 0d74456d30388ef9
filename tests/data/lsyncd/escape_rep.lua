local bomb = string.rep("x", 4 * 1024 * 1024 * 1024)
sync { default.rsync, source = bomb, target = "@BASE@/dst" }
