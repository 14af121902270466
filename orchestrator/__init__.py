"""l2lda-tune's orchestrator: YAML study → validated spec → Ray Tune sweep → MLflow (docs/architecture.md).

``orchestrator`` imports ``trainable``, never the other way round. Importing this
package starts nothing: Ray is imported only by :mod:`orchestrator.sweep` when a
sweep actually runs.
"""
from __future__ import annotations

from trainable import __version__

__all__ = ["__version__"]
