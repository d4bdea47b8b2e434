"""Benchmarks behind `qail-ros bench NAME`. Shared output helpers are in `report`."""
