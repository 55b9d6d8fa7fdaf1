"""The FUSE mount: our own kernel-protocol layer, operations, mounting."""
