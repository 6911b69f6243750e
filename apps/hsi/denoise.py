"""Denoising hyperspectral cubes: ``denoise(DenoiseConfig(...))``, behind ``hybrids hsi denoise``.

    hybrids hsi denoise scene.mat -o out/                       # the built-in HSDT-S, 31 bands
    hybrids hsi denoise scene.hdr -o clean.hdr -m runs/hsdt_m/best --flex
    hybrids hsi denoise cube.npy -o out/ --bands-first -m bm4d --sigma 30

**Inputs** are read with ``hybrids.datasets.hsi.read_cube`` (.mat v5/v7.3, ENVI .hdr + raw, .npy,
.tif); every input is read and checked before anything is written, and a bad one (wrong rank, NaN
values, a truncated file, an unknown format, a band count the model cannot take) stops the command
with one line naming it (``InputError``, exit status 2) and no output at all.

**Scaling.** Each cube is mapped to [0, 1] by its 0.1 and 99.9 percentiles (robust to impulse
noise and dead lines; the models were trained on cubes scaled to [0, 1]), denoised, and mapped
back; the output has the input's data type (rounded and clipped for integers), format, variable
name, band order and wavelengths, and is written atomically.

**Models.** ``model``: a model folder (``OUT/best`` of ``hybrids hsi train-denoiser``), a built-in
model name (default ``salinas_hsdt_s``, trained here on SalinasA's 31 visible bands), or a classical
method, ``bm4d`` or ``fasthyde`` (``hybrids.apps.hsi.peers``; they need the ``bm4d``/``bm3d``
packages). HSDT's learnable spectral query takes exactly the band count it was trained with (31);
``flex`` switches it to spectral self-attention, which takes any band count.

**Noise.** HSDT is a blind denoiser (trained on Gaussian sigma 10-70 / 255 and complex noise):
``sigma`` (0-255 scale of the cube's range) is only compared with the levels it was trained for.
BM4D uses ``sigma``, or, with ``blind`` (the default), estimates it (``peers.estimate_sigma``).

**Memory.** HSDT runs on overlapping spatial tiles (``tile`` pixels, ``overlap`` shared with each
neighbour, blended with linear ramps), all bands at once, with a progress bar over tiles: peak
memory is set by the tile, not by the cube (a 512 x 512 x 31 cube stays well under 2 GB).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrids.apps.core.errors import InputError

logger = logging.getLogger("hybrids.hsi.denoise")

__all__ = [
    "DEFAULT_MODEL",
    "DenoiseConfig",
    "DenoiseResult",
    "denoise",
    "denoise_array",
    "load_denoiser",
    "tiled_apply",
]

DEFAULT_MODEL = "salinas_hsdt_s"
CLASSICAL = ("bm4d", "fasthyde")
TRAINED_SIGMAS = (0.0, 80.0)  # a little beyond the 10-70 the models saw


@dataclass
class DenoiseConfig:
    """What ``hybrids hsi denoise`` does (module docstring)."""

    cubes: list[Path]
    output: Path
    model: str | None = None
    sigma: float | None = None
    blind: bool = False
    bands_first: bool = False
    flex: bool = False
    tile: int = 64
    overlap: int = 16
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.cubes = [Path(c) for c in self.cubes]
        self.output = Path(self.output)

    def check(self) -> None:
        if not self.cubes:
            raise InputError("no cubes to denoise")
        if self.sigma is not None and (self.blind or not self.sigma >= 0):
            raise InputError("--sigma must be >= 0 and cannot go with --blind")
        if self.tile < 8 or not 0 <= self.overlap < self.tile // 2:
            raise InputError(
                f"--tile must be >= 8 and --overlap in [0, tile / 2), got {self.tile}, {self.overlap}"
            )
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class DenoiseResult:
    source: Path
    output: Path
    method: str
    seconds: float
    scale: tuple[float, float] = (0.0, 1.0)  # the (low, high) mapped to [0, 1]
    extra: dict[str, Any] = field(default_factory=dict)


# -- the denoiser --------------------------------------------------------------------------------------
@dataclass
class Denoiser:
    """An HSDT model (``model``) or a classical method (``method``), ready to run."""

    name: str
    model: Any = None  # an nn.Module in eval mode
    method: str | None = None  # "bm4d" / "fasthyde"
    bands: int | None = None  # bands the model takes without flex (None: any)

    def accepts(self, bands: int) -> bool:
        return self.model is None or self.model.flex or bands == self.bands


def load_denoiser(model: str | None = None, *, flex: bool = False, device: str = "cpu") -> Denoiser:
    """The denoiser ``model`` names (module docstring); ``InputError`` when there is none."""
    name = model or DEFAULT_MODEL
    if name.lower() in CLASSICAL:
        return Denoiser(name.lower(), method=name.lower())
    from hybrids.apps.core.errors import HybridsError
    from hybrids.apps.core.registry import create_model

    if Path(name).exists():
        from hybrids.apps.core.checkpoint import load_checkpoint

        try:
            net = load_checkpoint(name, device="cpu")
        except HybridsError as exc:
            raise InputError(f"-m {name}: {exc}") from None
    else:
        try:
            net = create_model(name if "/" in name else _builtin_name(name))
        except HybridsError as exc:
            raise InputError(f"-m {name}: not a model folder, a built-in model or a method ({exc})") from None
    if not hasattr(net, "set_flex"):
        raise InputError(
            f"-m {name}: {getattr(net, 'model_name', 'this model')} is not a hyperspectral denoiser"
        )
    if flex:
        net.set_flex(True)
    net.eval().to(device)
    return Denoiser(name, model=net, bands=int(net.num_bands))


def _builtin_name(name: str) -> str:
    from hybrids.apps.core.catalog import builtin_models

    for builtin in builtin_models("hsi"):
        if builtin.name.split("/", 1)[1] == name:
            return builtin.name
    return f"hsi/{name}"


# -- tiles -------------------------------------------------------------------------------------------
def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _ramp(size: int, overlap: int) -> np.ndarray:
    """A weight that rises linearly over ``overlap`` pixels at both ends (never zero)."""
    w = np.ones(size, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        w[:overlap] = ramp
        w[size - overlap :] = ramp[::-1]
    return w


def tiled_apply(
    fn: Any, cube: np.ndarray, *, tile: int, overlap: int, divisor: int = 1, progress: bool = True
) -> np.ndarray:
    """``fn`` (``(bands, h, w) -> (bands, h, w)`` float32) over overlapping spatial tiles of ``cube``
    ``(bands, H, W)``, blended with linear ramps. Tiles are padded (reflect) to multiples of
    ``divisor``; a cube smaller than a tile is one padded tile."""
    from hybrids.apps.core.progress import progress_bar

    bands, h, w = cube.shape
    tile = max(divisor, tile - tile % divisor)
    th, tw = min(tile, h), min(tile, w)
    oh, ow = min(overlap, th // 2), min(overlap, tw // 2)
    rows, cols = _starts(h, th, th - oh), _starts(w, tw, tw - ow)
    out = np.zeros((bands, h, w), dtype=np.float32)
    weight = np.zeros((h, w), dtype=np.float32)
    wy = _ramp(th, oh if len(rows) > 1 else 0)
    wx = _ramp(tw, ow if len(cols) > 1 else 0)
    window = wy[:, None] * wx[None, :]
    boxes = [(r, c) for r in rows for c in cols]
    for r, c in progress_bar(boxes, desc="tiles", unit="tile", disable=not progress or None):
        patch = cube[:, r : r + th, c : c + tw]
        ph, pw = (-th) % divisor, (-tw) % divisor
        if ph or pw:
            mode = "reflect" if th > ph and tw > pw else "edge"
            patch = np.pad(patch, ((0, 0), (0, ph), (0, pw)), mode=mode)
        result = np.asarray(fn(patch), dtype=np.float32)[:, :th, :tw]
        out[:, r : r + th, c : c + tw] += result * window
        weight[r : r + th, c : c + tw] += window
    return out / weight


def _hsdt_fn(model: Any, device: str) -> Any:
    import torch

    def run(patch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None, None].to(device)
            return model(x)[0, 0].float().cpu().numpy()

    return run


def denoise_array(
    noisy: np.ndarray,
    denoiser: Denoiser,
    *,
    sigma: float | None = None,
    tile: int = 64,
    overlap: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Denoise ``noisy`` ``(bands, H, W)`` already on the [0, 1] scale (``sigma`` on that scale too)."""
    from hybrids.apps.hsi import peers

    if denoiser.method == "bm4d":
        return peers.bm4d_denoise(noisy, sigma)
    if denoiser.method == "fasthyde":
        return peers.fasthyde_denoise(noisy)
    divisor = int(getattr(denoiser.model, "size_divisor", 1))
    return tiled_apply(
        _hsdt_fn(denoiser.model, device),
        noisy,
        tile=tile,
        overlap=overlap,
        divisor=divisor,
        progress=progress,
    )


# -- the verb ---------------------------------------------------------------------------------------
def _outputs(config: DenoiseConfig) -> list[Path]:
    from hybrids.datasets.hsi import CUBE_SUFFIXES

    if (
        len(config.cubes) == 1
        and config.output.suffix.lower() in CUBE_SUFFIXES
        and not config.output.is_dir()
    ):
        return [config.output]
    names = [c.name for c in config.cubes]
    if len(set(names)) != len(names):
        raise InputError("two input cubes share a file name; denoise them into separate folders")
    return [config.output / name for name in names]


def _check_output(source: Path, output: Path, like_format: str) -> None:
    from hybrids.datasets.hsi import CUBE_SUFFIXES

    suffix = output.suffix.lower()
    expected = {"mat5": ".mat", "mat73": ".mat", "npy": ".npy", "envi": ".hdr", "tif": (".tif", ".tiff")}[
        like_format
    ]
    if suffix in CUBE_SUFFIXES and suffix not in (expected if isinstance(expected, tuple) else (expected,)):
        raise InputError(
            f"{output}: the output keeps the input's format ({source.name}); use a {expected} name"
        )
    if output.resolve() == source.resolve():
        raise InputError(f"{output}: would overwrite the input; choose another output")


def _scale(data: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(data, [0.1, 99.9])
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    return float(lo), float(hi if hi > lo else lo + 1.0)


def denoise(config: DenoiseConfig) -> list[DenoiseResult]:
    """Denoise every cube of ``config`` (module docstring); returns what was written."""
    import torch

    from hybrids.datasets.hsi import HSIFormatError, read_cube, write_cube

    config.check()
    outputs = _outputs(config)
    denoiser = load_denoiser(config.model, flex=config.flex, device=config.device)
    sigma = None if config.sigma is None else config.sigma / 255.0
    if (
        denoiser.model is not None
        and config.sigma is not None
        and not TRAINED_SIGMAS[0] <= config.sigma <= TRAINED_SIGMAS[1]
    ):
        logger.warning(
            "--sigma %g is outside the 10-70 the model was trained for; expect a weaker result", config.sigma
        )
    if denoiser.method == "fasthyde" and config.sigma is not None:
        logger.info("FastHyDe estimates the noise itself; --sigma is not used")
    shapes = []
    for source, output in zip(config.cubes, outputs):  # check everything before writing anything
        try:
            cube = read_cube(source, bands_first=config.bands_first)
        except HSIFormatError as exc:
            raise InputError(str(exc)) from None
        if not denoiser.accepts(cube.bands):
            raise InputError(
                f"{source}: {cube.bands} bands, but {denoiser.name} takes {denoiser.bands} (its learnable "
                "spectral query); pass --flex for spectral self-attention over any band count"
            )
        if denoiser.method and min(cube.shape[:2]) < 8:
            raise InputError(f"{source}: {cube.shape[:2]} pixels is too small for {denoiser.method}")
        _check_output(source, output, cube.format)
        shapes.append(cube.shape)
        del cube
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    results = []
    try:
        for source, output in zip(config.cubes, outputs):
            started = time.monotonic()
            cube = read_cube(source, bands_first=config.bands_first)
            data = cube.data.astype(np.float32)
            lo, hi = _scale(data)
            x = np.ascontiguousarray(np.moveaxis((data - lo) / (hi - lo), -1, 0))
            y = denoise_array(
                x, denoiser, sigma=sigma, tile=config.tile, overlap=config.overlap, device=config.device
            )
            written = write_cube(output, np.moveaxis(y, 0, -1) * (hi - lo) + lo, like=cube)
            seconds = time.monotonic() - started
            logger.info("%s: %d x %d x %d denoised in %.1f s -> %s", source, *cube.shape, seconds, written)
            results.append(DenoiseResult(source, written, denoiser.name, seconds, (lo, hi)))
    finally:
        torch.set_num_threads(threads_before)
    return results
