"""``semantic_id_module``: the seed module's import name, kept so existing code keeps working.

The "Semantic ID Standalone Module" told its users to write::

    from semantic_id_module import (ResidualQuantization, MiniBatchKMeans,
                                    SquaredEuclideanDistance, KMeansPlusPlusInitInitializer)

The wheel installs this directory as the top-level package ``semantic_id_module`` (see
``[tool.setuptools.package-dir]`` in pyproject.toml). It only re-exports the very same objects as
:mod:`semid_index.compat`; new code should import from :mod:`semid_index` (or
:mod:`semid_index.compat`) directly.
"""

# Absolute import: this file is imported as ``semantic_id_module``, where ``..compat`` has no parent.
from semid_index.compat import (
    KMeansPlusPlusInitInitializer,
    MiniBatchKMeans,
    ResidualQuantization,
    SquaredEuclideanDistance,
)

__all__ = [
    "ResidualQuantization",
    "MiniBatchKMeans",
    "SquaredEuclideanDistance",
    "KMeansPlusPlusInitInitializer",
]
