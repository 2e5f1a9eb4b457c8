"""Architectures. Importing this package registers every factory in harness.registry."""
