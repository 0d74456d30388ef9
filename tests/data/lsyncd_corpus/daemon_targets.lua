-- Mirrors to an rsync daemon that does not listen on 873: a module with a
-- password file (host::module, the port as rsync's --port), and the
-- rsync:// form with the port in the URL.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "mirror@@HOST@::www/site",
    delay = 5,
    rsync = {
        archive = true,
        compress = true,
        password_file = "@DATA@/rsyncd.secret",
        _extra = { "--port=@PORT@" },
    },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "rsync://mirror@@HOST@:@PORT@/docs",
    delay = 5,
    rsync = { archive = true, password_file = "@DATA@/rsyncd.secret" },
}
