"""The hot folder: layout, watcher, claims, journal, the worker loop, the service,
sd_notify and the console. Only ``worker`` loads torch and PIL (through ``job``)."""
