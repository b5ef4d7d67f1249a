"""Cascade gates: cheap image-level scorers, one file each, all behind :class:`Gate`."""

from core.cascade.gates.autoencoder import AutoencoderGate
from core.cascade.gates.base import Gate, LabelFreeGate, load_gate
from core.cascade.gates.distance import DistanceGate
from core.cascade.gates.stats import StatsGate
from core.cascade.gates.supervised import SupervisedGate

GATES: dict[str, type[Gate]] = {
    "supervised": SupervisedGate,
    "distance": DistanceGate,
    "stats": StatsGate,
    "autoencoder": AutoencoderGate,
}


def make_gate(name: str, seed: int = 0, **kwargs) -> Gate:
    from core.errors import WorkbenchError

    if name not in GATES:
        raise WorkbenchError(f"Unknown gate {name!r}.", f"Choose one of: {', '.join(GATES)}.")
    return GATES[name](seed=seed, **kwargs)


__all__ = ["GATES", "AutoencoderGate", "DistanceGate", "Gate", "LabelFreeGate", "StatsGate", "SupervisedGate",
           "load_gate", "make_gate"]
