-- default.direct for a local disk (cp and mv instead of rsync for single
-- events), and a mirror that trusts the target to be in sync at start
-- (init = false) and sends every change at once (maxDelays = 0).
sync {
    default.direct,
    source = "@BASE@/src",
    target = "@BASE@/dst-direct",
    delay = 1,
    exclude = { "*.part" },
    maxProcesses = 1,
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst-noinit",
    init = false,
    maxDelays = 0,
}
