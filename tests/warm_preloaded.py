"""Imported by the test worker at start-up (tests/test_warm.py): a task's child sees it already loaded."""
