"""Experiment configs: one file per method family; `get_config(arg)` returns a ConfigDict."""
