"""The driver side: command line, sweep planning, the Ray coordinator."""
