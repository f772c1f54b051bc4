"""The daemon: the scheduler, signals, reload, the watchdog and the notify thread."""
