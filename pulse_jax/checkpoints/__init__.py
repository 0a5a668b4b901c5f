"""Reading weight files: foreign checkpoints (torch, NVIDIA pickle) and the project's own."""


class CheckpointError(ValueError):
    """A weight file that cannot be read; the message names the file and what is wrong."""

    def __init__(self, path, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")
