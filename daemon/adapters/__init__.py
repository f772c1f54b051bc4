"""The edges: each adapter is the only module to import its library (the cloud SDK, SQLModel,
structlog, the systemd protocol, ...), and no adapter imports another."""
