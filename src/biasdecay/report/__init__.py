"""Turning results into text: terminal tables now, markdown reports and plots later."""
