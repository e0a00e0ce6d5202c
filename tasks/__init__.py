"""Pipeline stages: one module per dvc.yaml stage, wiring the library to DVC, MLflow and Ray."""
