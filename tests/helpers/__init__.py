"""Helpers shared by the test packages: the digits model they train, the servers they start."""
