local targets = { "/mnt/a", "/mnt/b" }
for _, t in ipairs(targets) do
    sync { default.rsync, source = "/srv/www", target = t .. suffix }
end
