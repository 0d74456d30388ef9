-- The shape of Lsyncd's own lrsync.lua example: settings{} as a call,
-- one default.rsync sync.
settings {
    logfile = "@BASE@/lsyncd.log",
    statusFile = "@BASE@/lsyncd.status",
    statusInterval = 1,
    nodaemon = true,
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 1,
}
