"""bcdr: backup and disaster recovery for AI datasets and model checkpoints."""

__version__ = "0.1.0"
