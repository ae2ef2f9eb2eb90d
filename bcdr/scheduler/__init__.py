"""The scheduler: what is due, run history, locks, retries, hooks, metrics, installs."""

from bcdr.statedir import STATE_ENV as STATE_ENV  # the folder of run history and job locks
