"""One exception type for errors caused by the user's input or environment (bad config value,
missing data source, ...). Its message names the problem and the fix; the command line prints it
without a traceback. Anything else is a bug and keeps its traceback."""


class ScalelearnError(Exception):
    pass
