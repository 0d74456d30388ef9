-- Excludes from the config and from a file; rsync filter rules from the
-- config and from a file. Two mirrors of one source.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-ex",
    delay = 1,
    exclude = "*.log",
    excludeFrom = "@DATA@/excludes.txt",
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-filter",
    delay = 1,
    filter = { "- *.bak", "- scratch/" },
    filterFrom = "@DATA@/filters.txt",
}
