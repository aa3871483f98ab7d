"""Objectives: the composition grammar and composite objectives built on the objective contract."""
