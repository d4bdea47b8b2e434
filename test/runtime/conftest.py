"""Runtime tests use the shared fixtures of test/conftest.py (runtime, zenoh_endpoint,
zenoh_runtime)."""
