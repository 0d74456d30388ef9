-- How symlinks and hard links travel: copied as files, directories kept
-- through links on the target, hard links kept, and no links at all.
local rsync_with = function(opts)
    local t = { archive = true }
    for k, v in pairs(opts) do t[k] = v end
    return t
end

sync {
    default.rsync, source = "@BASE@/src", target = "@BASE@/dst-copy", delay = 1,
    rsync = rsync_with { copy_links = true },
}
sync {
    default.rsync, source = "@BASE@/src", target = "@BASE@/dst-dirlinks", delay = 1,
    rsync = rsync_with { copy_dirlinks = true, keep_dirlinks = true, hard_links = true },
}
sync {
    default.rsync, source = "@BASE@/src", target = "@BASE@/dst-nolinks", delay = 1,
    rsync = { links = false, times = true, perms = true },
}
