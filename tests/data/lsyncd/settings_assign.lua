-- Lsyncd 2.0 style: settings assigned with '=' (2.2 refuses it, old
-- configs still have it), maxProcesses and maxDelays in settings.
settings = {
    logfile = "@BASE@/lsyncd.log",
    statusFile = "@BASE@/lsyncd.status",
    maxProcesses = 2,
    maxDelays = 50,
    insist = true,
}

sync { default.rsync, source = "@BASE@/src", target = "@BASE@/dst", delay = 1 }
