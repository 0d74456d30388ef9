-- Keep what the mirror overwrites, and mirrors of append-only logs.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-backup",
    delay = 1,
    rsync = {
        archive = true,
        backup = true,
        backup_dir = "@BASE@/backup",
        suffix = ".old",
    },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-append",
    delay = 1,
    rsync = { archive = true, append_verify = true },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-existing",
    delay = 1,
    rsync = { archive = true, append = true, existing = true },
}
