"""The scheduler: what is due, run history, locks, retries, hooks, metrics, installs."""

#: The environment variable naming the folder of run history and job locks.
STATE_ENV = "BCDR_STATE_DIR"
