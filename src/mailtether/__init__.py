"""mailtether: keep mail listeners connected and honest."""

from mailtether._clock import SYSTEM_CLOCK, Clock, SystemClock

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]
