"""The session's Ray fixture (tests/_ray_fixtures.py) for every reliability test."""
from _ray_fixtures import ray_session  # noqa: F401
