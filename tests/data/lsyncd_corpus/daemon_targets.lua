-- Mirrors to an rsync daemon: a module with a password file, and the
-- rsync:// form.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "mirror@@HOST@::www/site",
    delay = 5,
    rsync = {
        archive = true,
        compress = true,
        password_file = "@DATA@/rsyncd.secret",
    },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "rsync://mirror@@HOST@/docs",
    delay = 5,
    rsync = { archive = true, password_file = "@DATA@/rsyncd.secret" },
}
