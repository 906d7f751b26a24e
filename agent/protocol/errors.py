"""Domain errors. The CLI turns every TrainctlError into one clean line and an exit code."""


class TrainctlError(Exception):
    """An error a user can act on; its message is the whole story (no traceback shown)."""

    exit_code = 1


class ConfigError(TrainctlError):
    """Bad input: a config file, a flag, a run id. Exit code 2, like click's usage errors."""

    exit_code = 2


class RunIdError(ConfigError):
    """A run id that breaks the `<name>-YYYYMMDD-HHMMSS` rule."""


class StoreError(TrainctlError):
    """The run store could not be reached or refused an operation."""


class StoreRefused(StoreError):
    """The store cannot work as configured (no such bucket, access denied, bad credentials, wrong
    region): retrying will not help, so the agent refuses the run instead of spooling."""


class NotFound(StoreError):
    """A key or run that is not in the store."""
