"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class SmallViTError(Exception):
    """A problem with the user's input: the message names the problem and the fix."""


class ConfigError(SmallViTError):
    """A recipe, override or option is invalid."""


class DataError(SmallViTError):
    """A dataset is missing, unprepared, corrupt or has an unexpected layout."""
