-- default.rsyncssh to a backup host: renames and deletes run through ssh
-- on the target, transfers through rsync over the same ssh settings.
settings {
    logfile = "@BASE@/lsyncd.log",
    pidfile = "@BASE@/lsyncd.pid",
    nodaemon = false,
}

sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@USER@@@HOST@",
    targetdir = "@BASE@/dst",
    delay = 2,
    delete = "running",
    exclude = { "*.tmp" },
    ssh = {
        binary = "/usr/bin/ssh",
        port = @PORT@,
        identityFile = "@IDENTITY@",
        options = {
            UserKnownHostsFile = "@KNOWN_HOSTS@",
            StrictHostKeyChecking = "yes",
            BatchMode = "yes",
        },
        _extra = { "-o", "ConnectTimeout=10" },
    },
    rsync = {
        archive = true,
        compress = true,
    },
}
