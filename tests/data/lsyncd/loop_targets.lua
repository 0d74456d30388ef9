-- Loops, variables and string functions: one source mirrored to several
-- local targets, names built with string.format and '..'.
local base = "@BASE@"
local mirrors = { "a", "b", "c" }
local excludes = { "*.tmp", "*.swp" }

for i, m in ipairs(mirrors) do
    sync {
        default.rsync,
        source = base .. "/src",
        target = string.format("%s/mirror-%s-%d", base, string.upper(m), i),
        delay = 1,
        exclude = excludes,
    }
end
