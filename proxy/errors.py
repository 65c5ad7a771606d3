"""Errors that end the gateway at start, kept apart so the command line can catch them cheaply."""


class StartupError(Exception):
    """The gateway cannot start (a port is taken, a channel cannot connect, …)."""
