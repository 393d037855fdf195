"""The FastAPI service, the CLI, configuration and wiring."""
