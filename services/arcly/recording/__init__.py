"""Recording: a recorder is an ordinary stream subscriber writing through ``Storage``."""

from .recorder import RecordingManager, RecordSettings
from .storage import FilesystemStorage

__all__ = ["FilesystemStorage", "RecordSettings", "RecordingManager"]
