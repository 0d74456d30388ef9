-- default.rsyncssh with its ssh login in rsync.rsh (user, port, key,
-- options), settings that mean nothing to syncsup, and maxDelays = 0
-- (every change at once).
settings {
    logfile = "@BASE@/lsyncd.log",
    pidfile = "@BASE@/lsyncd.pid",
    nodaemon = false,
    maxDelays = 0,
}

sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@HOST@",
    targetdir = "@BASE@/dst",
    rsync = {
        archive = true,
        rsh = "/usr/bin/ssh -l @USER@ -p @PORT@ -i @IDENTITY@ -o UserKnownHostsFile=@KNOWN_HOSTS@ -o StrictHostKeyChecking=yes",
    },
}
