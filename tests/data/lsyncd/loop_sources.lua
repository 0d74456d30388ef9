-- A table of source/target pairs, the other common loop.
local base = "@BASE@"
local trees = {
    { from = "www", to = "www-copy" },
    { from = "home", to = "home-copy" },
}
for _, t in pairs(trees) do
    sync { default.rsync, source = base .. "/" .. t.from, target = base .. "/" .. t.to, delay = 1 }
end
