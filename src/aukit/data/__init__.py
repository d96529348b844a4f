"""Labelled and unlabeled face data: SynthAU, manifests, the BP4D / DISFA readers and protocol,
transforms, and the LightningDataModules (importable from here, e.g.
``aukit.data.SynthAUDataModule`` as a config's ``class_path``; loaded on first use, so that
``aukit.data.manifest`` and the readers do not import Lightning)."""

from __future__ import annotations

import importlib

DATAMODULES = ("AUDataModule", "SynthAUDataModule", "ManifestDataModule", "ProtocolDataModule",
               "BP4DDataModule", "DISFADataModule", "UnlabeledFaceDataModule")
__all__ = list(DATAMODULES)


def __getattr__(name: str):
    if name in DATAMODULES:
        return getattr(importlib.import_module("aukit.data.datamodules"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
