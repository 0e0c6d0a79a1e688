"""The one base class of the failures a stage reports as a one-line message (see kd/process/cli.py)."""


class PipelineError(RuntimeError):
    """A known failure with a message that says what is wrong and what to do about it."""
