"""Spark transformations: typed DataFrame-in, DataFrame-out functions, and the readers they call."""
