"""Studies that call the engine (backbones, coreset, faiss, fusion, cross-domain), each a function + CLI verb.

``python -m core experiment NAME DATASET --out DIR [--quick]`` runs one and writes its run folder
(see :mod:`core.experiments.common`); :mod:`core.experiments.service` lists and reads run folders.
"""

from core.experiments.common import STUDIES, StudyResult

__all__ = ["STUDIES", "StudyResult"]
