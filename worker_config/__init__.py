"""Configuration shared by workers, bridges and the command line, from environment variables."""

from taskcast.worker_config.celeryconfig import celery_config
from taskcast.worker_config.settings import (
    ENVIRONMENT_VARIABLES,
    VARIABLES,
    ConfigError,
    Settings,
    load_settings,
    to_environment,
)

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "VARIABLES",
    "ConfigError",
    "Settings",
    "celery_config",
    "load_settings",
    "to_environment",
]
