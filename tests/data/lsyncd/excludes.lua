-- exclude as a string and as a list, excludeFrom and filterFrom files,
-- filter rules.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 1,
    exclude = "*.log",
    excludeFrom = "@DATA@/excludes.txt",
}
sync {
    default.rsync,
    source = "@BASE@/src2",
    target = "@BASE@/dst2",
    delay = 1,
    exclude = { "*.bak", "/cache/" },
    filter = { "- *.tmp", "+ /keep/", "- /scratch/" },
    filterFrom = "@DATA@/filters.txt",
}
