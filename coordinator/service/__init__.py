"""Coordinator use cases: jobs, work for participants, submissions, the deadline driver, metrics.

Every use case runs in one database transaction per step; a round's state changes go through
the pure ``transition`` of the domain with a compare-and-set on its row version. What a
protection mode does differently lives in its round engine (``engines/``), found through
``engines.registry``; ``facade.CoordinatorService`` wires everything together.
"""
