"""Reading the configuration: files, secrets and locations; the ``check-config`` description;
the JSON Schema and the generated reference."""
