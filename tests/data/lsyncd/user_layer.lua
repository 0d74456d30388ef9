-- A user layer inheriting default.rsync and overriding its rsync table,
-- plus a layer copied field by field; rsync._extra.
local myrsync = {
    default.rsync,
    delay = 1,
    rsync = {
        archive = true,
        compress = true,
        _extra = { "--omit-dir-times", "--bwlimit=10000" },
    },
}

local copied = {}
for k, v in pairs(default.rsync) do copied[k] = v end
copied.delay = 2
copied.rsync = {
    binary = "/usr/bin/rsync", perms = true, links = true, times = true, checksum = true,
}

sync { myrsync, source = "@BASE@/src", target = "@BASE@/dst" }
sync { copied, source = "@BASE@/src", target = "@BASE@/dst2" }
