"""Discrete-event cluster simulator and capacity planner (`pdserve simulate`, `pdserve plan`).

Imports the live policies from `orchestrator/` (router, budget, planner) and never copies them.
"""
