"""The session's Ray fixture (tests/_ray_fixtures.py) for every reliability test, and the
orchestrator tests' helpers (tests/orchestrator/: CLI cases, bad specs, fake runs) importable."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "orchestrator"))

from _ray_fixtures import ray_session  # noqa: F401,E402
