"""Models: backbones (keras.applications registry, weights, surgery), the networks built on them.

The project's own Keras layers are in :mod:`shared.models.layers`. The names notebooks call are
re-exported here (``from shared import models; models.build_baseline``).
"""

from shared.models.networks import (
    build_baseline,
    build_head,
    build_transfer,
    feature_dim,
    replace_head,
)

__all__ = ["build_baseline", "build_head", "build_transfer", "feature_dim", "replace_head"]
