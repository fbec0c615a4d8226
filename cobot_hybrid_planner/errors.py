"""Errors raised by the planner cores.

Hierarchy::

    PlannerError   base of every planner error; narrow subclasses are added with their cores
"""


class PlannerError(Exception):
    """Base class of every error raised by cobot_hybrid_planner."""
