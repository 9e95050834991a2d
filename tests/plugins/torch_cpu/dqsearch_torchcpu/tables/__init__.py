"""Latency tables shipped with the plugin (found through the `dqsearch.latency_tables` entry point).

`torch-cpu/` holds a table of the tiny test model measured on an "example board": a study finds
it, compares its device identity with the backend it would measure with, and says which field
differs before profiling its own.
"""
