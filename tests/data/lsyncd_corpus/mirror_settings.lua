-- A web root mirrored to a second disk: the shape most published configs
-- have. Every global setting Lsyncd 2.2 knows except the syslog ones.
settings {
    logfile = "@BASE@/lsyncd.log",
    statusFile = "@BASE@/lsyncd.status",
    statusInterval = 20,
    nodaemon = true,
    insist = true,
    inotifyMode = "CloseWrite",
    maxProcesses = 2,
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 5,
    delete = true,
    exclude = { "*.tmp", "*.swp", ".cache/" },
    rsync = {
        archive = true,
        compress = true,
        whole_file = true,
        omit_dir_times = true,
        _extra = { "--human-readable" },
    },
}
