"""One exception type for bad input, so the CLI and the server can turn it into one clear line."""


class MilsilError(ValueError):
    """Input a user can fix: the message names what was wrong and what is allowed.

    The CLI prints it as a single line and exits non-zero; the gRPC server maps it to
    INVALID_ARGUMENT (or the code a subclass names).
    """


class NotFoundError(MilsilError):
    """A named model, dataset, job or file does not exist (gRPC NOT_FOUND)."""


class CheckpointError(MilsilError):
    """A checkpoint file is corrupt, foreign, or from an incompatible version."""
