"""Synthetic training data: plate rendering, camera motion and image degradation."""
