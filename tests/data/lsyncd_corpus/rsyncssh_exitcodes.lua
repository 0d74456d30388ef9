-- default.rsyncssh with the ssh exit codes written out, as the manual's
-- table of codes suggests: Lsyncd reads a table written like this (no
-- _verbatim marker) as a list, finds no code 0 and stops at the first
-- rename it runs through ssh.
sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@HOST@",
    targetdir = "@BASE@/dst",
    delay = 1,
    sshExitCodes = { [0] = "ok", [1] = "die", [255] = "again" },
    rsync = { archive = true },
    ssh = {
        port = @PORT@,
        identityFile = "@IDENTITY@",
        options = { UserKnownHostsFile = "@KNOWN_HOSTS@", StrictHostKeyChecking = "yes" },
        _extra = { "-l", "@USER@" },
    },
}
