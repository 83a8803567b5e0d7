"""Fruits! feature platform: a Dagster code location from fruit photos to PCA features."""
