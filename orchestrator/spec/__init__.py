"""A study: the YAML schema (:mod:`~orchestrator.spec.schema`), the validated study
(:mod:`~orchestrator.spec.study`) and reading it (:mod:`~orchestrator.spec.load`);
docs/architecture.md, layout.

``orchestrator.spec.Param`` is a name Ray's pickled sweep state holds (sweeps started before
the schema had its own module): it stays importable here, so such a sweep resumes.
"""
from orchestrator.spec.schema import Param

__all__ = ["Param"]
