"""Workflows: the public entries that compose stages (hunt = search -> evaluation -> report; atlas = measure -> page -> push)."""
