"""prospect: training framework for proactive streaming video assistants."""

__version__ = "0.1.0"
