"""The agent roles (planner, worker, reflector) and their backends."""
