"""The errors fer-bench raises on purpose; the CLI prints them as one line and exits 1."""


class FerBenchError(Exception):
    """Base class: anything the user can fix (bad config, bad data, bad paths)."""


class ConfigError(FerBenchError, ValueError):
    """A config key is unknown, of the wrong type, or out of range."""


class DataError(FerBenchError):
    """A data source is missing, empty, unreadable or inconsistent."""


class RunError(FerBenchError):
    """A run directory is missing, incomplete, or not of the expected kind."""
