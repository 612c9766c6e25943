"""agentforge: agents that write a verified, fast ASP kernel library for an emulated RDU."""

__version__ = "0.1.0"
