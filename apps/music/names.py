"""What a separation model is called, without loading it (and without importing torch).

``model_folder_name`` is the ``<model>`` of ``separate``'s ``OUT/<model>/...`` and of ``music
evaluate``'s report: the model actually used, so that two different models never write to the same
folder. ``list_models_text`` is ``separate --list-models``, read from the model index
(``hybrids.apps.core.catalog``) and a demucs repository's file names: it answers in well under a
second. ``resolve_signature`` turns ``-s/--sig SIGNATURE`` into what loads it.
"""

from __future__ import annotations

from pathlib import Path

from hybrids.apps.core.errors import InputError

__all__ = ["GENERIC_FOLDERS", "list_models_text", "model_folder_name", "resolve_signature", "repo_models"]

# Folder names that say nothing of the model (a training run's outputs): their parent's is added.
GENERIC_FOLDERS = ("best", "last", "model", "checkpoint", "checkpoints", "weights", "final")
_OUR_WEIGHTS_FILE = "model"  # model.safetensors: named by its folder


def _folder_label(folder: Path) -> str:
    folder = folder.expanduser().resolve()
    name = folder.name or "model"
    if name.lower() in GENERIC_FOLDERS and folder.parent.name:
        return f"{folder.parent.name}_{name}"  # runs/X/best -> X_best
    return name


def model_folder_name(
    name: str | Path, *, weights: str | Path | None = None, repo: str | Path | None = None
) -> str:
    """The ``<model>`` output folder name of ``-n name [--weights W] [--repo R]``:

    * a checkpoint folder: its name, with its parent's when the name is generic
      (``runs/X/best`` -> ``X_best``; ``GENERIC_FOLDERS``); a ``.safetensors`` file: its stem
      (``model.safetensors``: its folder's label);
    * ``--weights FILE``: the file's stem (``my_finetune.th`` -> ``my_finetune``), a demucs
      ``<signature>-<sha8>.th`` its signature, ``model.safetensors`` its folder's label;
    * otherwise the name as given, short (``music/htdemucs`` -> ``htdemucs``; with ``--repo``,
      demucs's ``-n NAME``).
    """
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            return _folder_label(path)
        return _folder_label(path.parent) if path.stem == _OUR_WEIGHTS_FILE else path.stem
    if weights is not None:
        file = Path(weights).expanduser()
        if file.is_file():
            if file.stem == _OUR_WEIGHTS_FILE:
                return _folder_label(file.parent)
            if file.suffix == ".th" and "-" in file.stem:
                return file.stem.split("-", 1)[0]  # demucs: <signature>-<sha256 prefix>.th
            return file.stem
    return str(name).rsplit("/", 1)[-1]


def repo_models(repo: str | Path) -> tuple[list[str], list[str]]:
    """``(bags, single models)`` of a demucs repository folder: ``NAME.yaml`` bags and the
    signatures of ``<signature>[-<sha8>].th`` files, sorted (demucs's ``--list-models --repo``)."""
    folder = Path(repo).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: --repo must be a folder (of weights files)")
    bags = sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    singles = sorted({p.stem.split("-", 1)[0] for p in folder.iterdir() if p.suffix == ".th" and p.is_file()})
    return bags, singles


def list_models_text(repo: str | Path | None = None) -> str:
    """``separate --list-models``: demucs's two lists (``Bag of models:``, ``Single models:``), of the
    registered music models (with where their weights are) or of ``repo``'s files; then the built-in
    models, and a hint on checkpoint folders."""
    from hybrids.apps.core.catalog import catalog_rows, read_index

    lines: list[str] = []
    if repo is not None:
        bags, singles = repo_models(repo)
        lines += ["Bag of models:", *(f"    {b}" for b in bags)]
        lines += ["Single models:", *(f"    {s}" for s in singles)]
        return "\n".join(lines)
    index = read_index()["models"]
    rows = catalog_rows("music")
    registered = [r for r in rows if r["name"] in index or "model" not in r]
    builtin = [r for r in rows if "model" in r]

    def files(row: dict) -> int:
        weights = index.get(row["name"], {}).get("weights") or [{}]
        return len(weights[0].get("files") or [])

    width = max((len(r["name"].split("/", 1)[1]) for r in rows), default=0)

    def line(row: dict) -> str:
        short = row["name"].split("/", 1)[1]
        return f"    {short.ljust(width)}  {row['weights']}: {row['description']}"

    lines += ["Bag of models:", *(line(r) for r in registered if files(r) > 1)]
    lines += ["Single models:", *(line(r) for r in registered if files(r) <= 1)]
    if builtin:
        lines += ["Built-in models (offline):", *(line(r) for r in builtin)]
    lines.append(
        "(also: -n FOLDER, a checkpoint of `hybrids music train`; --repo DIR -n NAME, a demucs repository)"
    )
    return "\n".join(lines)


def resolve_signature(signature: str, repo: str | Path | None) -> tuple[str, Path | None]:
    """``(name, repo)`` that load the single model of demucs signature ``signature`` (``-s/--sig``):
    its ``<signature>-*.th`` in ``repo``, else in the weights cache, else the official model whose
    weights file has that signature (``955717e8`` is ``htdemucs``). demucs's ``-s`` reads a dora
    experiment folder, which hybrids does not: its package (``.th``) is what loads here."""
    from hybrids.apps.core.catalog import read_index, weights_cache_dir

    if not signature or "/" in signature or signature.startswith("."):
        raise InputError(f"-s/--sig: {signature!r} is not a model signature (e.g. 955717e8)")
    folders = [Path(repo).expanduser()] if repo is not None else [weights_cache_dir()]
    for folder in folders:
        if folder.is_dir() and (
            any(folder.glob(f"{signature}-*.th")) or (folder / f"{signature}.th").is_file()
        ):
            return signature, folder
    if repo is None:
        for name, info in read_index()["models"].items():
            for weights in info["weights"]:
                if [f.split("-", 1)[0] for f in weights["files"]] == [signature]:
                    return name, None  # an official single model: resolved, cached or downloaded
    where = f"{repo}" if repo is not None else f"the weights cache ({weights_cache_dir()})"
    raise InputError(
        f"-s {signature}: no {signature}-*.th in {where}; pass --repo DIR holding it (hybrids loads a "
        "signature's .th package, not a dora experiment folder)"
    )
