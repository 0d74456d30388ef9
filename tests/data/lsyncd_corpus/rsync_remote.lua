-- default.rsync to a remote host: ssh options in rsync.rsh, the remote
-- rsync named, and every change sent at once.
settings {
    maxDelays = 0,
}

sync {
    default.rsync,
    source = "@BASE@/src",
    target = "@USER@@@HOST@:@BASE@/dst",
    rsync = {
        archive = true,
        compress = true,
        rsync_path = "/usr/bin/rsync",
        rsh = "/usr/bin/ssh -p @PORT@ -i @IDENTITY@ -o UserKnownHostsFile=@KNOWN_HOSTS@ -o StrictHostKeyChecking=yes -o BatchMode=yes",
    },
}
