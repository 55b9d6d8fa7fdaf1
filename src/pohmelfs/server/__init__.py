"""The export server: confined storage access and the TCP service."""
