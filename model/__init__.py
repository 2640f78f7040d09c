"""Networks, training, evaluation and MLflow tracking and registry."""
