-- The four values of delete, one mirror each. The targets hold files the
-- source never had: "startup" and true remove them at start, false and
-- "running" keep them.
local src = "@BASE@/src"

sync { default.rsync, source = src, target = "@BASE@/dst-true", delay = 3, delete = true }
sync { default.rsync, source = src, target = "@BASE@/dst-false", delay = 3, delete = false }
sync {
    default.rsync, source = src, target = "@BASE@/dst-startup", delay = 3,
    delete = "startup",
}
sync {
    default.rsync, source = src, target = "@BASE@/dst-running", delay = 3,
    delete = "running",
}
