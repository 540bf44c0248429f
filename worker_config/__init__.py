"""Configuration shared by workers, bridges and the command line, from environment variables."""

from .celeryconfig import celery_config
from .settings import ENVIRONMENT_VARIABLES, ConfigError, Settings, load_settings

__all__ = ["ENVIRONMENT_VARIABLES", "ConfigError", "Settings", "celery_config", "load_settings"]
