"""Verification: the registry of modules and test shapes, the parity harness, the tolerance
table and ``python -m parity report``. Imported by the tests and the report, not by the
conversion API."""
