"""cbr-replicator: keeps Huawei Cloud CBR server backups replicated to other regions."""

__version__ = "0.1.0"
