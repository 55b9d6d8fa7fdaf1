"""Who may use a server, and how each frame proves where it came from.

Sans-I/O, like the protocol: keys and their files (``keys``), the handshake's
proofs and session keys (``handshake``), the tag on every frame (``tags``),
what each client key may do (``policy``), and TLS contexts (``tls``).
"""
