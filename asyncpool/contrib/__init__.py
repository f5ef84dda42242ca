"""Optional integrations (metrics exporters, framework helpers); each needs its extra."""

__all__ = ()
