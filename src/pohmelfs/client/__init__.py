"""The client core: connections, transactions and the library API."""
