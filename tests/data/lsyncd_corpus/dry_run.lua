-- A config left in test mode: Lsyncd runs rsync --dry-run, so the target
-- never changes. syncsup has no dry-run mirror.
sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 1,
    rsync = { archive = true, dry_run = true },
}
