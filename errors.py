"""The one exception type for expected failures (bad flags, missing files, unusable data).

Anything raised as ``UserInputError`` is shown to the user as a single line and the
process exits with code 2; every other exception is a bug and keeps its traceback.
"""


class UserInputError(Exception):
    """A problem the user can fix: the message names the value or file and what to do."""


EXIT_USAGE = 2
