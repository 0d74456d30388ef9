-- copy_unsafe_links, documented for newer Lsyncd (2.2.3 refuses the key).
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 1,
    rsync = { archive = true, copy_unsafe_links = true },
}
