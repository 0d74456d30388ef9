-- default.direct: local target, renames with mv (rename(2) in syncsup).
sync {
    default.direct,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delete = "running",
}
