-- default.rsyncssh: renames replayed on the target over ssh.
settings { logfile = "@BASE@/lsyncd.log", nodaemon = true }

sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@HOST@",
    targetdir = "@BASE@/dst",
    delay = 1,
    ssh = {
        port = @PORT@,
        identityFile = "@IDENTITY@",
        options = {
            UserKnownHostsFile = "@KNOWN_HOSTS@",
            StrictHostKeyChecking = "yes",
        },
    },
}
