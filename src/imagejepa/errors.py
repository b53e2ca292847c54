"""The errors imagejepa raises on purpose: one hierarchy, so that the command line maps each
kind to its exit code and prints its message as one line. Imports nothing of ours.

    ImageJepaError
      UsageError          exit 2: the request cannot be done as asked (arguments, config, input files)
        ConfigError         a config key or value; MaskError: mask settings impossible on the grid
        UnreadableFileError a file given to imagejepa is truncated, empty or foreign;
          UnsafeFileError     or unpickling it would run code (nothing in it was run)
        ConvertError, KeyMapError, ExportError, EvalError, MissingDependencyError
      RunError            exit 1: a run failed part-way; what was saved is intact
        CheckpointError     a run's checkpoint cannot be written, or fails verification
        DataError           unusable data (BadImageError: one unreadable image)
        NonFiniteError      a non-finite loss or gradient
      Preempted           exit 75 (imagejepa.train.preempt): stopped by a signal after saving
"""

from __future__ import annotations


class ImageJepaError(Exception):
    """Base of every error imagejepa raises on purpose; the message is meant for the user."""

    # Raised by every rank of a run at the same step, from values the ranks agreed on: no
    # rank needs telling (see imagejepa.distributed.failures).
    on_every_rank: bool = False


class UsageError(ImageJepaError):
    """Bad arguments, configuration or input files: one line to stderr, exit code 2."""


class ConfigError(UsageError, ValueError):
    """A configuration problem, with a message naming the key and what is allowed."""


class MaskError(ConfigError):
    """Mask settings that cannot be sampled on the patch grid."""


class UnreadableFileError(UsageError, ValueError):
    """A weights file that cannot be read: empty, truncated, or not a checkpoint at all."""


class UnsafeFileError(UnreadableFileError):
    """A file whose unpickling would import or call arbitrary code; it was not unpickled."""


class ConvertError(UsageError, ValueError):
    """Weights that cannot be read as, or mapped to, a known format."""


class KeyMapError(ConvertError):
    """Parameter names or shapes that do not match the expected layout."""


class ExportError(UsageError, ValueError):
    """A bundle that cannot be written in the requested format."""


class EvalError(UsageError, ValueError):
    """A bad evaluation request (protocol, encoder, layers)."""


class MissingDependencyError(UsageError, ImportError):
    """An optional package that this command needs is not installed."""


class RunError(ImageJepaError):
    """A run that failed part-way (exit code 1); checkpoints already written are intact."""


class CheckpointError(RunError, RuntimeError):
    """A run's checkpoint that cannot be written, or fails verification or safe loading."""


class DataError(RunError, RuntimeError):
    """The data cannot be used: too many unreadable files, or one with ``data.on_error: raise``."""


class LostProcessError(RunError, RuntimeError):
    """Another process of a multi-process run failed or vanished mid-run."""


class NonFiniteError(RunError, RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""

    on_every_rank = True  # the ranks read the same averaged loss and agreed flags
