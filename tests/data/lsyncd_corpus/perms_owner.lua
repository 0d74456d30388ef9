-- Ownership and modes on the target: explicit perms/owner/group with a
-- chmod and chown, and archive with user and group maps.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-chmod",
    delay = 2,
    rsync = {
        links = true,
        times = true,
        perms = true,
        owner = true,
        group = true,
        chmod = "Dug+rwx,Fo-w",
        chown = "root:root",
    },
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-map",
    delay = 2,
    rsync = {
        archive = true,
        usermap = "*:root",
        groupmap = "*:root",
    },
}
