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


class UnavailableHereError(MilsilError):
    """Well-formed, but this machine cannot do it (e.g. ImageNet weights cannot be
    downloaded offline); the message names the alternative (gRPC FAILED_PRECONDITION)."""


def compact(value: object) -> str:
    """A number as a message shows it: short, whatever its size (1e308, not 309 digits).

    Integers of up to 15 digits print exactly; anything larger, and every float, prints in
    ``:.6g`` form (``1e+308``, ``0.0001``, ``inf``). Anything else prints as ``repr``,
    cut to 80 characters.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        if abs(value) < 10**15:
            return str(value)
        try:
            return f"{float(value):.6g}"
        except OverflowError:  # beyond any float: the order of magnitude is the news
            return f"{'-' if value < 0 else ''}~1e+{int(value.bit_length() * 0.30103)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
