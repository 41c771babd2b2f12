"""What is made from a run: report, figures, export, predictions, MLflow."""
