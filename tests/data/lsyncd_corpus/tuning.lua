-- Transfer tuning a busy mirror accumulates over the years.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-fast",
    delay = 1,
    rsync = {
        archive = true,
        inplace = true,
        sparse = true,
        one_file_system = true,
        bwlimit = 20000,
        timeout = 60,
        ipv4 = true,
        protect_args = true,
        verbose = true,
        omit_link_times = true,
    },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-careful",
    delay = 1,
    rsync = {
        archive = true,
        update = true,
        ignore_times = true,
        prune_empty_dirs = true,
        temp_dir = "/tmp",
        acls = true,
        xattrs = true,
        rsync_path = "/usr/bin/rsync",
        quiet = true,
        ipv6 = true,
        cvs_exclude = true,
    },
}
