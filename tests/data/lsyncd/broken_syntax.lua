settings {
    logfile = "/tmp/x.log",
}

sync {
    default.rsync
    source = "/srv/www",
    target = "/mnt/www",
}
