"""Azure's limits for managed-disk snapshots, in one place."""

MAX_DISK_SNAPSHOTS = 500  # incremental snapshots per disk
NAME_MAX = 80  # snapshot, disk and restore point names
