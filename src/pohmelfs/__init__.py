"""pohmelfs: a network filesystem with a coherent client cache."""

from .client.client import Client, ScanEntry
from .client.file import RemoteFile
from .protocol import Cred, ProtocolError

__version__ = "0.1.0"
__all__ = ["Client", "Cred", "ProtocolError", "RemoteFile", "ScanEntry", "__version__"]
