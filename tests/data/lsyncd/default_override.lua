-- Changing the default layer itself: every default.rsync sync gets it.
default.rsync.delay = 1
default.rsync.rsync.owner = true
default.rsync.rsync.perms = true
default.rsync.rsync.group = true

sync { default.rsync, source = "@BASE@/src", target = "@BASE@/dst" }
