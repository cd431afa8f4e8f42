"""Fixtures shared by the task tests (mnist_root lives in tests/conftest.py)."""
