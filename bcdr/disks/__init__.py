"""Managed-disk protection: incremental snapshots, VM restore points, cross-region copies,
retention and trial restores, through azure-mgmt-compute behind the small ``DiskService``
protocol (``bcdr.disks.service``)."""
