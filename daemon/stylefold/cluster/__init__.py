"""GPU workers on other machines: a Celery worker per device on a Redis broker, and the
coordinator side of ``stylefold serve --broker`` (SPEC §8). See ``protocol`` for what
travels and why."""
