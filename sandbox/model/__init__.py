"""Frozen values every layer shares: the run's Spec, its Result, sizes and durations."""
