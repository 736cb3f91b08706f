"""sdlora's exception types. Depends on nothing.

Every error a user can cause is an `SdloraError` whose message says which file, key or value is
wrong and what to do. The CLI prints the message and exits with code 2; the web UI shows it.
"""


class SdloraError(Exception):
    """Base class for errors with a message meant for the user."""


class FormatError(SdloraError, ValueError):
    """A file is not a LoRA sdlora can read, or is damaged."""


class CompatibilityError(SdloraError, ValueError):
    """A LoRA does not fit the model or family it is applied to."""


class ConfigError(SdloraError, ValueError):
    """A configuration file, option or value is invalid."""


class DatasetError(SdloraError, ValueError):
    """A training data set cannot be used."""


class TrainingError(SdloraError, RuntimeError):
    """Training had to stop (for example a non-finite loss)."""


class Interrupted(SdloraError):
    """The user stopped a running job (an image, a grid) before it finished; nothing was produced."""


class SourceChangedError(SdloraError, RuntimeError):
    """A model file that patched weights are restored from changed since they were loaded."""
