"""Alembic migrations of the monitoring store, shipped in the package so a wheel can migrate."""
