"""The one exception type that means "the user asked for something wrong": shown as one line."""


class UserError(Exception):
    """Bad input or a state the user must resolve; the message names the problem and the fix."""


class BadValue(UserError, ValueError):
    """A config value that cannot be built (a ValueError too, for callers outside the CLI)."""
