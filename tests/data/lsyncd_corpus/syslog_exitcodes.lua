-- A mirror run under syslog, with its own view of which rsync exit codes
-- are fatal, and rsync's errors on vanished files treated as success.
settings {
    logfacility = "daemon",
    logident = "lsyncd-www",
    pidfile = "@BASE@/lsyncd.pid",
    statusFile = "@BASE@/lsyncd.status",
}

local codes = {}
for k, v in pairs(default.rsyncExitCodes) do codes[k] = v end
codes[24] = "ok"
codes[23] = "again"
-- copied whole: a table written out ({ [0] = "ok", ... }) lacks the
-- _verbatim marker, and Lsyncd then reads its codes as a list
local ssh_codes = {}
for k, v in pairs(default.sshExitCodes) do ssh_codes[k] = v end
ssh_codes[1] = "die"

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@BASE@/dst",
    delay = 1,
    exitcodes = codes,
    rsync = { archive = true },
}

sync {
    default.rsyncssh,
    source = "@BASE@/src",
    host = "@HOST@",
    targetdir = "@BASE@/dst-ssh",
    delay = 1,
    rsyncExitCodes = codes,
    sshExitCodes = ssh_codes,
    ssh = {
        port = @PORT@,
        identityFile = "@IDENTITY@",
        options = { UserKnownHostsFile = "@KNOWN_HOSTS@", StrictHostKeyChecking = "yes" },
        _extra = { "-l", "@USER@" },
    },
}
