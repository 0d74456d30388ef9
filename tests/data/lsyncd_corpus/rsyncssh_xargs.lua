-- A config written for Lsyncd 2.1: default.rsyncssh with an xargs table
-- (Lsyncd 2.2 removed it and refuses the key).
sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@HOST@",
    targetdir = "@BASE@/dst",
    delay = 1,
    xargs = { binary = "/usr/bin/xargs", delimiter = "\000", _extra = { "-0", "rm -rf" } },
    ssh = {
        port = @PORT@,
        identityFile = "@IDENTITY@",
        options = { UserKnownHostsFile = "@KNOWN_HOSTS@", StrictHostKeyChecking = "yes" },
        _extra = { "-l", "@USER@" },
    },
}
