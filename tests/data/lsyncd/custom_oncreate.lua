-- One plain rsync sync, and a Layer 3 sync with its own Lua onCreate:
-- the first imports, the second cannot (partial import).
sync { default.rsync, source = "@BASE@/src", target = "@BASE@/dst", delay = 1 }

local notify = {
    delay = 1,
    onCreate = function(event)
        spawn(event, "/usr/bin/logger", "created ", event.pathname)
    end,
    onModify = "logger modified ^pathname",
}
sync { notify, source = "@BASE@/src" }
