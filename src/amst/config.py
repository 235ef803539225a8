"""Run configuration: every option of ``amst run``, from defaults, a YAML file and the CLI.

Sections mirror the pipeline stages. Unknown keys, wrong types and out-of-range values are
refused with a message that names the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .choices import allows_none, check_choices, coerce_choice, literal_values
from .elastic import ElasticParams
from .prealign import PrealignConfig
from .register import BackendName
from .register.elastix import validate_parameters as validate_elastix_parameters
from .register.fast import FastParams
from .register.fast import validate_params as validate_fast_params

if typing.TYPE_CHECKING:
    from .zspacing import ZSpacingParams

# The coarsest level of an output pyramid keeps at least this many px on the canvas's short side.
MIN_PYRAMID_SIDE = 16


@dataclass
class InputConfig:
    pattern: str | None = None
    dataset: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    allow_pad: bool = False
    skip_bad: bool = False
    channel: int | None = None


@dataclass
class TemplateConfig:
    median_radius: int = 7
    leave_one_out: bool = True
    # Pass 2 rebuilds the templates from the pre-aligned slices ("prealigned") or from pass 1's
    # results ("corrected"). Slices pass 1 found distorted (auto-focus events: a linear
    # correction moving the canvas corners by more than outlier_distortion_px) enter pass-2
    # templates placed by their pass-1 correction: leaving them out instead made the windows of
    # their neighbours lopsided, and those came out 0.5-1.8 px off on the phantom (slices 21-32
    # of `amst synth --shape 300 384 384 --seed 0`, against 0.3-0.5 px with the corrected
    # placement). "prealigned" with 1 px is best (benchmarks/accuracy.py --variants): pass-1
    # results of an event's neighbours carry the event's pull on their templates.
    second_pass_from: Literal["corrected", "prealigned"] = "prealigned"
    outlier_distortion_px: float = 1.0
    balanced: bool = False   # a slice left out of a window also takes out its mirror partner
    ends: Literal["mirror", "shrink", "extend"] = "extend"  # the window at the stack ends (see amst.template)


@dataclass
class RegisterConfig:
    # fast: numpy/OpenCV Gauss-Newton affine (seconds per stack); elastix: the paper's engine
    # and parameters (mutual information, gradient descent).
    backend: BackendName = "fast"
    # Overrides of elastix's parameter map, under elastix's own names ("MaximumNumberOfIterations"):
    # a mapping, not a dataclass, checked by amst.register.elastix.validate_parameters.
    elastix: dict[str, Any] = field(default_factory=dict)
    # The fast back-end's tuning; YAML `fast: {max_iterations: 20}` sets fields like any section.
    fast: FastParams = field(default_factory=FastParams)
    max_scale_change: float = 0.05
    max_shear: float = 0.05
    max_shift_px: float = 25.0
    min_ncc_gain: float = -0.05
    min_ncc: float = 0.2
    passes: int = 2
    # Share of the non-blank slices that may fall back before the run stops (1.0: never stops).
    max_fallback_fraction: float = 0.2
    # How each slice's final affine comes from its pre-alignment and its template registration
    # (amst.combine): "significance" applies a correction only where it exceeds the run's own
    # measured noise by `significance` (and weighs the two translations by their noise);
    # "registration" takes the registration as it is (the paper's AMST).
    combine: Literal["significance", "registration"] = "significance"
    significance: float = 6.0
    # Beyond the affine: a smooth displacement field where a slice has a significant local
    # distortion that its neighbours do not share (amst.elastic); off by default.
    elastic: ElasticParams = field(default_factory=ElasticParams)

    def validate(self) -> None:
        """Refuse back-end parameters the back-ends do not read and values that make no sense."""
        if isinstance(self.fast, dict):  # a RegisterConfig built in Python with the former mapping
            validate_fast_params(self.fast, "register.fast")
            self.fast = FastParams(**self.fast)
        validate_fast_params(dataclasses.asdict(self.fast), "register.fast")  # ranges; types too, if built in Python
        validate_elastix_parameters(self.elastix, "register.elastix")
        if self.passes not in (1, 2):
            raise ValueError(f"register.passes: {self.passes} must be 1 or 2")
        for key in ("max_scale_change", "max_shear", "max_shift_px"):
            _in_range(f"register.{key}", getattr(self, key), 0.0, math.inf, low_open=True)
        _in_range("register.min_ncc", self.min_ncc, -1.0, 1.0)
        _in_range("register.min_ncc_gain", self.min_ncc_gain, -2.0, 2.0)
        _in_range("register.max_fallback_fraction", self.max_fallback_fraction, 0.0, 1.0)
        _in_range("register.significance", self.significance, 0.0, math.inf, low_open=True)
        e = self.elastic
        if e.grid_spacing_px != 0:  # 0: automatic
            _in_range("register.elastic.grid_spacing_px", e.grid_spacing_px, 8.0, math.inf)
        for key, low in (("radius", 0), ("min_shift_px", 0.0), ("min_nodes", 1), ("iterations", 1)):
            _in_range(f"register.elastic.{key}", getattr(e, key), low, math.inf)
        _in_range("register.elastic.significance", e.significance, 0.0, math.inf, low_open=True)


@dataclass
class WarpConfig:
    order: Literal["cubic", "linear", "nearest"] = "cubic"


@dataclass
class OutputConfig:
    # tiff: one file per slice; tiff-stack: one ImageJ TIFF
    out_format: Literal["zarr", "tiff", "tiff-stack", "mrc"] = "zarr"
    pyramid_levels: int = 1
    # OME-Zarr only: 0.4 (what most viewers read) or 0.5 (Zarr v3). YAML reads 0.5 as a number:
    # a text choice takes it back as "0.5" (amst.choices.coerce_choice).
    ngff_version: Literal["0.4", "0.5"] = "0.4"


@dataclass
class ZSpacingConfig:
    # off; estimate: each slice's depth from the images (amst.zspacing) into transforms.json;
    # resample: also write the output on an even z grid at the nominal step (aligned_z).
    mode: Literal["off", "estimate", "resample"] = "off"
    max_gap: int = 2
    tile: int = 16
    region: int = 1024
    # The mean thickness from the voxel size's z (nominal), or from isotropy (in-plane).
    calibration: Literal["nominal", "in-plane"] = "nominal"

    def validate(self) -> None:
        self.params()

    def params(self) -> "ZSpacingParams":
        from .zspacing import ZSpacingParams

        return ZSpacingParams(max_gap=self.max_gap, tile=self.tile, region=self.region,
                              calibration=self.calibration)


@dataclass
class ExecutionConfig:
    workers: int | None = None
    block_size: int | None = None
    scheduler: str | None = None
    cluster: Literal["slurm"] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    input: InputConfig = field(default_factory=InputConfig)
    prealign: PrealignConfig = field(default_factory=PrealignConfig)
    prealigned: str | None = None
    template: TemplateConfig = field(default_factory=TemplateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    z_spacing: ZSpacingConfig = field(default_factory=ZSpacingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def validate(self) -> "RunConfig":
        """Check every option that does not depend on the stack; return ``self``.

        Every choice among strings is checked against its ``Literal`` type hint
        (:func:`amst.choices.check_choices`), as :func:`build_config` checks it while parsing.

        Raises
        ------
        ValueError
            Naming the key and what is allowed.
        """
        self.prealign.validate()  # first: its messages name the CLI flags too
        check_choices(self, recurse=True)
        if self.output.ngff_version != "0.4" and self.output.out_format != "zarr":
            raise ValueError(f"output.ngff_version: {self.output.ngff_version} needs output.out_format zarr; a "
                             f"{self.output.out_format} output is not OME-Zarr (leave ngff_version out)")
        if self.input.channel is not None and self.input.channel < 0:
            raise ValueError(f"input.channel: {self.input.channel} must be >= 0 (0 is the first channel)")
        if math.isnan(self.template.outlier_distortion_px):
            raise ValueError("template.outlier_distortion_px: nan must be a number (0 or less: leave no slice out)")
        if self.template.median_radius < 1:
            raise ValueError(f"template.median_radius: {self.template.median_radius} must be >= 1 (the paper uses 7); "
                             "with 0 each slice would be its own template and nothing would be corrected")
        self.register.validate()
        self.z_spacing.validate()
        if self.output.pyramid_levels < 1:
            raise ValueError(f"output.pyramid_levels: {self.output.pyramid_levels} must be >= 1")
        if self.output.pyramid_levels > 1 and self.output.out_format != "zarr":
            raise ValueError(f"output.pyramid_levels: {self.output.pyramid_levels} needs output.out_format zarr; "
                             f"a {self.output.out_format} output has no pyramid (leave pyramid_levels at 1)")
        if self.execution.workers is not None and self.execution.workers < 1:
            raise ValueError(f"execution.workers: {self.execution.workers} must be >= 1")
        if self.execution.block_size is not None and self.execution.block_size < 1:
            raise ValueError(f"execution.block_size: {self.execution.block_size} must be >= 1")
        if self.input.voxel_size is not None and (len(self.input.voxel_size) != 3 or min(self.input.voxel_size) <= 0):
            raise ValueError(f"input.voxel_size: {self.input.voxel_size} must be three positive numbers Z Y X (nm)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def result_affecting(self) -> dict[str, Any]:
        """The options that change the output (execution options and the fallback stop do not:
        a run stopped by ``register.max_fallback_fraction`` resumes with a higher one)."""
        d = self.to_dict()
        d.pop("execution")
        d["register"].pop("max_fallback_fraction")
        d.pop("z_spacing")  # measured after the alignment, from its output: a resumed run redoes it
        # The fast back-end's overrides only, as before it was a section: a run folder written
        # then still resumes (its digest held an empty mapping for the defaults).
        defaults = dataclasses.asdict(type(self.register.fast)())
        d["register"]["fast"] = {k: v for k, v in d["register"]["fast"].items() if v != defaults[k]}
        if not self.register.elastic.enabled:  # off: the digest of runs from before the stage existed
            d["register"].pop("elastic")
        return d


def validate_for_canvas(cfg: RunConfig, canvas_shape_yx: tuple[int, int]) -> None:
    """Refuse options that do not fit the canvas, once it is known (before anything is written).

    Parameters
    ----------
    cfg : a validated configuration
    canvas_shape_yx : (H, W) of the output canvas

    Raises
    ------
    ValueError
        When ``output.pyramid_levels`` would make the coarsest level smaller than
        :data:`MIN_PYRAMID_SIDE` px on the canvas's short side; names the largest allowed.
    """
    levels = cfg.output.pyramid_levels
    short = min(int(v) for v in canvas_shape_yx)
    allowed = max_pyramid_levels(canvas_shape_yx)
    if levels > allowed:
        h, w = canvas_shape_yx
        raise ValueError(f"output.pyramid_levels: {levels} levels of a {h}x{w} canvas "
                         f"make the coarsest level {short >> (levels - 1)} px on its short side (fewer than "
                         f"{MIN_PYRAMID_SIDE}); use at most {allowed}")


def max_pyramid_levels(canvas_shape_yx: tuple[int, int]) -> int:
    """Most output pyramid levels (full resolution included) whose coarsest level keeps at
    least :data:`MIN_PYRAMID_SIDE` px on the short side (each level halves, rounding down,
    as the OME-Zarr writer does); 1 for a canvas smaller than that."""
    short = min(int(v) for v in canvas_shape_yx)
    levels = 1
    while short >> levels >= MIN_PYRAMID_SIDE:
        levels += 1
    return levels


# Flat option names (CLI / Python API) -> config path.
FLAT_OPTIONS: dict[str, str] = {
    "pattern": "input.pattern", "dataset": "input.dataset", "voxel_size": "input.voxel_size",
    "allow_pad": "input.allow_pad", "skip_bad": "input.skip_bad", "channel": "input.channel",
    "prealign": "prealign.method", "roi": "prealign.roi", "roi_units": "prealign.roi_units",
    "roi_slice": "prealign.roi_slice", "search_margin": "prealign.search_margin",
    "min_score": "prealign.min_score", "gaps": "prealign.gaps", "canvas": "prealign.canvas",
    "xcorr_prefilter": "prealign.xcorr_prefilter", "max_features": "prealign.max_features",
    "prealigned": "prealigned", "median_radius": "template.median_radius",
    "backend": "register.backend", "passes": "register.passes",
    "max_fallback_fraction": "register.max_fallback_fraction", "combine": "register.combine",
    "elastic": "register.elastic.enabled",
    "order": "warp.order", "out_format": "output.out_format",
    "pyramid_levels": "output.pyramid_levels", "ngff_version": "output.ngff_version", "workers": "execution.workers",
    "block_size": "execution.block_size", "scheduler": "execution.scheduler", "cluster": "execution.cluster",
    "z_spacing": "z_spacing.mode",
}


def _in_range(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Refuse a number outside [low, high] ((low, high] with ``low_open``), NaN included."""
    if (low < value if low_open else low <= value) and value <= high:
        return
    bounds = f"> {low:g}" if low_open else f">= {low:g}"
    raise ValueError(f"{key}: {value!r} must be {bounds}" + (f" and <= {high:g}" if high < math.inf else ""))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint of ``key``; return it converted."""
    allowed = literal_values(hint)
    if allowed is not None:  # a choice among strings (None too for `Literal[...] | None`)
        return coerce_choice(key, value, allowed, optional=allows_none(hint))
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(key, v, inner) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted on/off as a boolean: a text option takes it back
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown option {path!r}; allowed here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a section (mapping), got {value!r}")
            _apply(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def build_config(file: str | Path | dict | None = None, **flat: Any) -> RunConfig:
    """Defaults, then a YAML file (or dict), then flat options (None means "not given").

    Raises
    ------
    ValueError
        Naming the offending key and what is allowed.
    """
    cfg = RunConfig()
    if file is not None:
        data = file if isinstance(file, dict) else load_yaml(file)
        data = {k: v for k, v in data.items() if k != "amst_version"}
        _apply(cfg, data, "")
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if value is None:
            continue
        if name not in FLAT_OPTIONS:
            raise ValueError(f"unknown option {name!r}; allowed: {', '.join(sorted(FLAT_OPTIONS))}")
        if name == "roi" and isinstance(value, str) and value != "auto":
            raise ValueError(f"roi: {value!r} must be 'auto' or four numbers X Y W H")
        section = nested
        *parents, leaf = FLAT_OPTIONS[name].split(".")
        for p in parents:
            section = section.setdefault(p, {})
        section[leaf] = list(value) if isinstance(value, tuple) else value
    _apply(cfg, nested, "")
    return cfg.validate()


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read config ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def dump_yaml(cfg: RunConfig, version: str) -> str:
    return yaml.safe_dump({"amst_version": version, **cfg.to_dict()}, sort_keys=False)
