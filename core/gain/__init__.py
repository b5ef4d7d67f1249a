"""GAIN-MTL: a supervised defect classifier whose class-activation map is guided onto the defect.

Strategy table and settings in :mod:`core.gain.config`, the network in :mod:`core.gain.model`, loss terms in
:mod:`core.gain.losses`, training in :mod:`core.gain.train`, metrics and the S1-S6 comparison in
:mod:`core.gain.evaluate`, model folders and prediction in :mod:`core.gain.inference`, what the CAM page needs in
:mod:`core.gain.service`, the CLI verb in :mod:`core.gain.cli`.
"""

from core.gain.config import STRATEGIES, STRATEGY_NAMES, GainConfig, StrategyFlags, strategy

__all__ = ["STRATEGIES", "STRATEGY_NAMES", "GainConfig", "StrategyFlags", "strategy"]
