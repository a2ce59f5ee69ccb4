"""Drift and health checks behind `recsmith monitor`: drift.py (pure measures), check.py
(reading both sides, levels), report.py (Markdown, HTML, JSON)."""
