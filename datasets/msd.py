"""The Medical Segmentation Decathlon layout (also nnU-Net v2's raw layout) and nnU-Net's k-fold split.

    dataset = read_msd_dataset("../shared/data/hippocampus")
    dataset.name, dataset.licence, dataset.labels   # "Hippocampus", "CC-BY-SA 4.0", {0: "background", ...}
    dataset.cases[0]                                    # MSDCase("hippocampus_001", (image,), label)
    train, valid = kfold_split(dataset.case_names, fold=0, folds=5)   # nnU-Net's splits_final.json

A dataset folder holds ``dataset.json`` and ``imagesTr/`` + ``labelsTr/``. The cases are those of
``dataset.json``'s ``"training"`` list (MSD: ``{"image": "./imagesTr/x.nii.gz", "label": ...}``);
without that list (nnU-Net v2), every ``labelsTr/<case><ending>`` with its images
``imagesTr/<case>_0000<ending>``, ``_0001``... (one file per channel). MSD's own file names carry
no channel suffix: such a case has one image file (3-D; MSD's 4-D multi-modal files are refused by
``load_volume`` with a clear message). Every problem raises ``MSDError`` (a ``ValueError``) with one
line naming the file and the problem.

``kfold_split`` reproduces nnU-Net's default cross-validation split (``splits_final.json``): the
sorted case identifiers split by ``sklearn.model_selection.KFold(n_splits=folds, shuffle=True,
random_state=12345)``, fold ``k`` being the ``k``-th (train, validation) pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MSDError", "MSDCase", "MSDDataset", "read_msd_dataset", "kfold_split", "names_digest"]

DATASET_JSON = "dataset.json"
NNUNET_SEED = 12345
NNUNET_SPLIT = f"nnU-Net KFold(shuffle=True, random_state={NNUNET_SEED}) over sorted case names"


class MSDError(ValueError):
    """A dataset folder that does not follow the MSD / nnU-Net layout; one line naming the file."""


@dataclass(frozen=True)
class MSDCase:
    """One training case: its identifier, image file(s) (one per channel) and label file."""

    name: str
    images: tuple[Path, ...]
    label: Path


@dataclass
class MSDDataset:
    """What ``dataset.json`` says, with the cases resolved to existing files."""

    root: Path
    name: str
    description: str
    licence: str
    reference: str
    modalities: dict[int, str]
    labels: dict[int, str]  # including 0 (background)
    cases: list[MSDCase]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def case_names(self) -> list[str]:
        return [case.name for case in self.cases]

    @property
    def num_classes(self) -> int:
        """Number of output classes, background included (``max label + 1``)."""
        return max(self.labels) + 1

    @property
    def in_channels(self) -> int:
        return len(self.modalities) or len(self.cases[0].images)

    def case(self, name: str) -> MSDCase:
        for case in self.cases:
            if case.name == name:
                return case
        raise MSDError(f"{self.root}: no case {name!r}")

    def labels_json(self) -> dict[str, str]:
        """``{"0": "background", "1": ...}`` (MSD's own form)."""
        return {str(k): v for k, v in sorted(self.labels.items())}


def _nifti_stem(name: str) -> tuple[str, str] | None:
    for ending in (".nii.gz", ".nii"):
        if name.lower().endswith(ending):
            return name[: -len(ending)], name[-len(ending) :]
    return None


def _int_keyed(path: Path, what: str, mapping: Any) -> dict[int, str]:
    """MSD's ``{"0": "background"}`` or nnU-Net v2's inverted ``{"background": 0}``."""
    if not isinstance(mapping, dict) or not mapping:
        raise MSDError(f"{path}: '{what}' must be a non-empty object")
    out: dict[int, str] = {}
    for key, value in mapping.items():
        if str(key).strip().isdigit():
            index, name = int(key), str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            index, name = int(value), str(key)
        else:
            raise MSDError(f"{path}: '{what}' entry {key!r}: {value!r} is not an integer label and a name")
        if index in out:
            raise MSDError(f"{path}: '{what}' has label {index} twice")
        out[index] = name
    return dict(sorted(out.items()))


def read_msd_dataset(root: str | Path) -> MSDDataset:
    """Read ``root/dataset.json`` and resolve the training cases (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise MSDError(
            f"{root}: {'not a folder' if root.exists() else 'no such folder'} (an MSD dataset folder)"
        )
    path = root / DATASET_JSON
    if not path.is_file():
        raise MSDError(f"{root}: no {DATASET_JSON} (expected the Medical Segmentation Decathlon layout)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MSDError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise MSDError(f"{path}: expected a JSON object")
    if "labels" not in raw:
        raise MSDError(f"{path}: no 'labels' (label numbers and names)")
    labels = _int_keyed(path, "labels", raw["labels"])
    if 0 not in labels:
        labels = {0: "background", **labels}
    if sorted(labels) != list(range(len(labels))):
        raise MSDError(f"{path}: labels must be 0..N without gaps, got {sorted(labels)}")
    channel_key = "modality" if "modality" in raw else "channel_names" if "channel_names" in raw else None
    modalities = _int_keyed(path, channel_key, raw[channel_key]) if channel_key else {}
    if modalities and sorted(modalities) != list(range(len(modalities))):
        raise MSDError(f"{path}: '{channel_key}' must number channels 0..N-1, got {sorted(modalities)}")
    if isinstance(raw.get("training"), list):
        cases = _cases_from_list(root, path, raw["training"])
    else:
        cases = _cases_from_folders(root, path, raw.get("file_ending", ".nii.gz"), max(1, len(modalities)))
    if not cases:
        raise MSDError(f"{path}: no training cases")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise MSDError(f"{path}: case {duplicate!r} appears twice")
    n_images = {len(c.images) for c in cases}
    if len(n_images) > 1:
        raise MSDError(f"{path}: cases have different numbers of image channels ({sorted(n_images)})")
    if modalities and len(cases[0].images) not in (1, len(modalities)):
        raise MSDError(
            f"{path}: {len(modalities)} channels in '{channel_key}' but {len(cases[0].images)} image "
            f"files per case"
        )
    return MSDDataset(
        root=root,
        name=str(raw.get("name", root.name)),
        description=str(raw.get("description", "")),
        licence=str(raw.get("licence", raw.get("license", ""))),
        reference=str(raw.get("reference", "")),
        modalities=modalities,
        labels=labels,
        cases=sorted(cases, key=lambda c: c.name),
        raw=raw,
    )


def _cases_from_list(root: Path, path: Path, entries: list) -> list[MSDCase]:
    cases = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MSDError(f"{path}: training entry {i} needs 'image' and 'label'")
        label = (root / str(entry["label"])).resolve()
        stem = _nifti_stem(label.name)
        if stem is None:
            raise MSDError(f"{path}: training entry {i}: label {entry['label']!r} is not a NIfTI file")
        if not label.is_file():
            raise MSDError(f"{label}: label file of training entry {i} is missing")
        image = (root / str(entry["image"])).resolve()
        if image.is_file():
            images: tuple[Path, ...] = (image,)
        else:  # nnU-Net v2 keeps one file per channel, image_0000.nii.gz, ...
            images = _channel_files(image.parent, *(_nifti_stem(image.name) or (image.name, "")))
            if not images:
                raise MSDError(f"{image}: image file of training entry {i} is missing")
        cases.append(MSDCase(stem[0], images, label))
    return cases


def _channel_files(folder: Path, stem: str, ending: str) -> tuple[Path, ...]:
    files = []
    while (candidate := folder / f"{stem}_{len(files):04d}{ending}").is_file():
        files.append(candidate)
    return tuple(files)


def _cases_from_folders(root: Path, path: Path, ending: str, channels: int) -> list[MSDCase]:
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    for folder in (labels_dir, images_dir):
        if not folder.is_dir():
            raise MSDError(f"{path}: no 'training' list and no {folder.name}/ folder")
    cases = []
    for label in sorted(labels_dir.iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):
            continue
        name = label.name[: -len(ending)]
        images = _channel_files(images_dir, name, ending)
        if not images and (images_dir / label.name).is_file():
            images = (images_dir / label.name,)
        if not images:
            raise MSDError(f"{label}: no image {name}_0000{ending} in {images_dir}")
        if len(images) != channels and channels > 1:
            raise MSDError(f"{images_dir}: case {name} has {len(images)} channel files, expected {channels}")
        cases.append(MSDCase(name, images, label))
    return cases


def kfold_split(
    names: Sequence[str], fold: int, folds: int = 5, seed: int = NNUNET_SEED
) -> tuple[list[str], list[str]]:
    """``(train, validation)`` case names of ``fold`` (0-based) among ``folds``: nnU-Net's split."""
    import numpy as np
    from sklearn.model_selection import KFold

    keys = np.sort(np.unique(np.asarray(list(names), dtype=object).astype(str)))
    if folds < 2:
        raise MSDError(f"folds must be >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise MSDError(f"fold must be in 0..{folds - 1}, got {fold}")
    if len(keys) < folds:
        raise MSDError(f"{len(keys)} cases cannot be split into {folds} folds")
    train_idx, valid_idx = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(keys))[fold]
    return [str(k) for k in keys[train_idx]], [str(k) for k in keys[valid_idx]]


def names_digest(names: Sequence[str]) -> str:
    """sha256 of the sorted names joined by newlines (records a split compactly)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()
