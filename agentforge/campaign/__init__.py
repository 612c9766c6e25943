"""Campaigns: a suite of tasks in, a verified kernel library out (docs/campaigns.md)."""

from .config import Budget, CampaignConfig, ConfigError, bundled_suite, load_config
from .rundb import RunDB
from .runner import CampaignResult, RunDirError, run_campaign

__all__ = ["Budget", "CampaignConfig", "ConfigError", "bundled_suite", "load_config", "RunDB", "CampaignResult",
           "RunDirError", "run_campaign"]
