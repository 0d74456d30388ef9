-- One user layer for every mirror, a loop over the mirrors, locals,
-- string.format and a base directory that may come from the environment.
local base = os.getenv("LSYNCD_CORPUS_UNSET") or "@BASE@"

local mirror = {
    default.rsync,
    delay = 2,
    maxDelays = 500,
    rsync = {
        binary = "/usr/bin/rsync",
        links = true,
        times = true,
        perms = true,
        checksum = true,
        executability = true,
    },
}

for _, name in ipairs({ "a", "b" }) do
    sync {
        mirror,
        source = base .. "/src",
        target = string.format("%s/dst-%s", base, name),
    }
end
