"""Thin entry points: the only modules that read argv or build a SparkSession."""
