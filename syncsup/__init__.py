"""syncsup: a live mirror daemon for Linux (inotify + rsync under a supervisor)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
