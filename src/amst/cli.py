"""The ``amst`` command line."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import click
from click.core import ParameterSource

from . import __version__
from .config import FLAT_OPTIONS, RunConfig
from .stack import StackError, VoxelSize, open_stack
from .stack.tiff import DEFAULT_PATTERN
from .transforms_io import STATUSES

log = logging.getLogger(__name__)

# ctx.meta key (ctx.meta is shared by a command's context and the group's): the options the
# user typed, as {flat option name: the flag}, for error messages that name the flag.
_TYPED_FLAGS = "amst.typed_flags"
# CLI parameter names that differ from their flat option name (amst.config.FLAT_OPTIONS).
_PARAM_TO_FLAT = {"prealign_method": "prealign", "method": "prealign", "method_alias": "prealign"}
# What to tell the user after Ctrl-C, per command.
_INTERRUPT_HINTS = {"run": "; re-run the same command to resume",
                    "prealign": "; OUT is incomplete: re-run with --overwrite to replace it",
                    "synth": "; OUT is incomplete: re-run with --overwrite to replace it"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# A message that starts with a config key, optionally followed by its flag: "min_score (--min-score): ".
_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w.]*)(?: \(--[\w-]+\))?: ")


# -- options taking several numbers -----------------------------------------------------------

class _Numbers(click.ParamType):
    """Several numbers given as separate words or as one quoted string (``'1 2 3'``, ``1,2,3``).

    Parameters
    ----------
    kind : type
        ``float`` or ``int``.
    count : int, optional
        How many numbers exactly (None: one or more).
    words : tuple of str
        Words accepted instead of numbers (``auto``); returned as they are.
    what : str
        How the numbers read in a message, e.g. ``X Y W H``.
    """

    name = "numbers"

    def __init__(self, kind: type, count: int | None = None, words: tuple[str, ...] = (), what: str = ""):
        self.kind = kind
        self.count = count
        self.words = words
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (tuple, list)):
            parts = [str(v) for v in value]
        else:
            text = str(value).strip()
            if text in self.words:
                return text
            parts = text.replace(",", " ").split()
        expected = self._expected()
        try:
            numbers = tuple(self.kind(p) for p in parts)
        except ValueError:
            self.fail(f"{' '.join(parts)!r}: expected {expected}", param, ctx)
        if not numbers or (self.count is not None and len(numbers) != self.count):
            self.fail(f"{' '.join(parts)!r}: expected {expected}", param, ctx)
        return numbers

    def _expected(self) -> str:
        amount = f"{self.count}" if self.count else "one or more"
        kind = "whole numbers" if self.kind is int else "numbers"
        words = "".join(f" or {w}" for w in self.words)
        return f"{amount} {kind}{f' {self.what}' if self.what else ''}{words}"


class _NumbersOption(click.Option):
    """An option whose value may continue over the next words when they are numbers.

    ``--roi 120 40 900 110`` and ``--roi '120 40 900 110'`` give the same value. Click has
    no variable-count option, so the parser's handler of this option takes the following
    words that read as numbers (at most ``max_values`` in all); any other word (INPUT, OUT,
    the next option, ``--``) ends the value.
    """

    def __init__(self, *args: Any, max_values: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_values = max_values

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        name = self.opts[0]
        parser_option = parser._long_opt.get(name) or parser._short_opt.get(name)
        store = parser_option.process

        def process(value: Any, state: Any) -> None:
            store(_take_numbers(value, state.rargs, self.max_values), state)

        parser_option.process = process


def _take_numbers(value: Any, rargs: list[str], max_values: int | None) -> Any:
    """``value`` extended by the numbers that follow it in ``rargs`` (which are consumed)."""
    if not isinstance(value, str):
        return value
    parts = value.replace(",", " ").split()
    if not parts or not all(_NUMBER.match(p) for p in parts):
        return value
    while rargs and (max_values is None or len(parts) < max_values) and _NUMBER.match(rargs[0]):
        parts.append(rargs.pop(0))
    return " ".join(parts)


def _default(flat: str, none: str = "") -> str:
    """The default of a flat option as ``--help`` shows it, read from :class:`RunConfig`."""
    value: Any = RunConfig()
    for part in FLAT_OPTIONS[flat].split("."):
        value = getattr(value, part)
    if value is None:
        return none
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def _help(text: str, flat: str, none: str = "") -> str:
    """``text`` followed by the option's real default, as click writes it."""
    return f"{text}  [default: {_default(flat, none)}]"


def _voxel_option(f: Callable) -> Callable:
    return click.option("--voxel-size", cls=_NumbersOption, max_values=3, default=None, metavar="Z Y X",
                        type=_Numbers(float, 3, what="Z Y X"),
                        help=_help("Voxel size in nm (overrides the file's metadata).", "voxel_size",
                                   "from the file's metadata"))(f)


def _voxel(values: tuple[float, ...] | None) -> VoxelSize | None:
    return VoxelSize.from_values(*values) if values else None


# -- errors, Ctrl-C, -v ------------------------------------------------------------------------

def _flat_for_key(key: str) -> str | None:
    """The flat option a config key (``prealign.min_score``, ``min_score``) belongs to."""
    for flat, path in FLAT_OPTIONS.items():
        if key == path:
            return flat
    if key in FLAT_OPTIONS:
        return key
    leaves = [flat for flat, path in FLAT_OPTIONS.items() if path.rsplit(".", 1)[-1] == key]
    return leaves[0] if len(leaves) == 1 else None


def name_flag(message: str, typed: Mapping[str, str]) -> str:
    """A validation message that starts with a config key, led by the flag the user typed.

    ``"prealign.min_score: 2.0 must be ..."`` (or ``"min_score: ..."``, or ``"min_score
    (--min-score): ..."``) becomes ``"--min-score (prealign.min_score): 2.0 must be ..."``
    when ``--min-score`` was typed; a key that came from a config file (not in ``typed``)
    is left as it is.

    Parameters
    ----------
    message : str
        The error message.
    typed : mapping
        Flat option name -> the flag the user typed (e.g. ``{"min_score": "--min-score"}``).

    Returns
    -------
    str
    """
    m = _KEY_PREFIX.match(message)
    flat = _flat_for_key(m.group(1)) if m else None
    if flat is None or flat not in typed:
        return message
    return f"{typed[flat]} ({FLAT_OPTIONS[flat]}): {message[m.end():]}"


def _typed_flags(ctx: click.Context) -> dict[str, str]:
    """CLI parameter name -> flag, for every option given on the command line."""
    return {p.name: max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)
            and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE}


def _expected_error(exc: BaseException) -> bool:
    """Errors of the user's input or environment: one line, no traceback (unless -v)."""
    if isinstance(exc, click.ClickException):
        return False
    if isinstance(exc, (StackError, ValueError, OSError)):
        return True
    # The run stopped on a result it must not hand over (amst.pipeline.RunError): the
    # pipeline module is loaded whenever it can have raised one.
    run_error = getattr(sys.modules.get("amst.pipeline"), "RunError", None)
    return run_error is not None and isinstance(exc, run_error)


class _Command(click.Command):
    """Records which options the user typed, so that errors can name their flags."""

    def invoke(self, ctx: click.Context) -> Any:
        typed = _typed_flags(ctx)
        ctx.meta[_TYPED_FLAGS] = {_PARAM_TO_FLAT.get(name, name): flag for name, flag in typed.items()}
        log.debug("amst %s %s; options given: %s", __version__, ctx.info_name,
                  {flag: ctx.params[name] for name, flag in typed.items()} or "none")
        return super().invoke(ctx)


class _Cli(click.Group):
    """Turns expected errors (bad input, bad options) into one clear line, no traceback
    (``-v`` adds it), and Ctrl-C into one line and exit status 130."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        verbose = bool(ctx.params.get("verbose"))
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(f"amst: interrupted{_INTERRUPT_HINTS.get(ctx.invoked_subcommand or '', '')}", err=True)
            if verbose:
                click.echo(traceback.format_exc().rstrip(), err=True)
            sys.exit(130)
        except Exception as exc:
            if not _expected_error(exc):
                raise
            click.echo(f"amst: error: {name_flag(str(exc), ctx.meta.get(_TYPED_FLAGS, {}))}", err=True)
            if verbose:
                click.echo(traceback.format_exc().rstrip(), err=True)
            sys.exit(2)


@click.group(cls=_Cli)
@click.version_option(package_name="amst")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages; show the traceback of an error.")
def main(verbose: bool) -> None:
    """AMST: align FIB-SEM stacks to a median-smoothed template."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # Set on the "amst" logger itself: the pipeline's log file handler keeps a level set here.
    logging.getLogger("amst").setLevel(logging.DEBUG if verbose else logging.INFO)


# -- commands ------------------------------------------------------------------------------------

@main.command()
@click.argument("path")
@click.option("--pattern", default=None, help=f"Glob for TIFF folders.  [default: {DEFAULT_PATTERN}]")
@click.option("--dataset", default=None, help="HDF5 dataset, Zarr array or N5 dataset (scale level) inside PATH.")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Channel of a multi-channel input (Janelia .dat detector, OME-Zarr c axis).  [default: the first]")
@click.option("--allow-pad", is_flag=True,
              help="As for amst run: slices of differing shape are padded (info lists them either way).")
@click.option("--skip-bad", is_flag=True, help="List unreadable slices instead of stopping at the first one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_voxel_option
def info(path: str, pattern: str | None, dataset: str | None, channel: int | None, allow_pad: bool,
         skip_bad: bool, as_json: bool, voxel_size: tuple[float, ...] | None) -> None:
    """Shape, dtype, voxel size (and where it came from) and slice count of a stack."""
    # Always opened with padding allowed: info's job is to list the slices that differ.
    stack = open_stack(path, pattern=pattern, dataset=dataset, voxel_size=_voxel(voxel_size), allow_pad=True,
                       skip_bad=skip_bad, channel=channel)
    d = stack.describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    z, y, x = d["shape_zyx"]
    click.echo(f"path        {d['path']} ({d['kind']})")
    click.echo(f"slices      {z}")
    click.echo(f"slice shape {y} x {x} (y x)")
    click.echo(f"dtype       {d['dtype']}")
    click.echo(f"voxel size  {stack.voxel_size if stack.voxel_size else 'unknown (pass --voxel-size Z Y X)'}")
    if stack.voxel_size:
        click.echo(f"  from      {d.get('voxel_size_source') or 'unknown'}")
    if d.get("channels"):
        listing = ", ".join(f"{i}: {n}" for i, n in enumerate(d["channels"]))
        click.echo(f"channel     {d['channel']} ({d['channel_name']}) of {listing}; choose with --channel")
    if d.get("data_bar_cropped"):
        click.echo(f"data bar    cropped from {len(d['data_bar_cropped'])} slice(s) (FEI metadata: image "
                   f"{d['data_bar_cropped'][0]['image_rows']} rows)")
    if d.get("first"):
        click.echo(f"files       {d['first']} ... {d['last']} (pattern {d['pattern']})")
    mism = d.get("shape_mismatches") or []
    if mism:
        click.echo(f"WARNING     {len(mism)} slice(s) differ from the canvas {y} x {x}:")
        for m in mism[:20]:
            click.echo(f"            {m['name']}: {m['shape_yx'][0]} x {m['shape_yx'][1]}")
        click.echo("            (padded at the bottom/right)" if allow_pad else
                   "            (amst run and amst prealign need --allow-pad to pad them)")
    else:
        click.echo("consistency all slices have the same shape")
    bad = d.get("unreadable") or []
    if bad:
        click.echo(f"WARNING     {len(bad)} slice(s) cannot be read (blank with --skip-bad):")
        for b in bad[:20]:
            click.echo(f"            {b['name']}: {b['error']}")


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default="fibsem-marks", show_default=True,
              type=click.Choice(["fibsem-marks", "fibsem-nomarks", "ideal", "fibsem-elastic"]),
              help="fibsem-elastic: as fibsem-marks, and every auto-focus event also displaces an irradiated "
                   "region locally by 1-3 px (a non-affine distortion; ground_truth.json records it).")
@click.option("--shape", nargs=3, type=int, default=None, metavar="Z Y X",
              help="[default: 100 1024 1024; with --from-volume the source's depth, and its slice less a "
                   "margin of 24 px (at most 1/8 of the side) on each side]")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
              help="nm [default: 8 5 5; with --from-volume the source's, so its slices are used as they are]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["uint8", "uint16", "float32"]), default="uint8", show_default=True)
@click.option("--no-marks", is_flag=True, help="No alignment marks in the platinum cap.")
@click.option("--from-volume", "from_volume", default=None, metavar="PATH",
              help="Real content: an aligned stack amst can read (e.g. ../shared/data/fibsem_isotropic/"
                   "flyem_medulla_250.tif) sampled instead of the phantom, with the same acquisition model and "
                   "exact ground truth; --preset fibsem-marks paints the marks cap over its top.")
@click.option("--cap-height", type=float, default=None,
              help="Fraction of the field height under the platinum cap with the marks [default 0.15]; a small "
                   "field needs more, so that drift does not carry the marks out of view.")
@click.option("--texture", default=None, help="Real 2-D EM image used as cytoplasm texture (e.g. real_2d/*.h5).")
@click.option("--warp-z-scale", type=float, default=None,
              help="Depth (px) over which membranes bend sideways [default 45]; larger: structures slide less "
                   "with depth, so content-based pre-alignment drifts less.")
@click.option("--autofocus-at", cls=_NumbersOption, default=None, metavar="Z [Z ...]", type=_Numbers(int),
              help="Also place auto-focus events at these slices (consecutive slices: one event), e.g. the "
                   "first or last few.  [default: none]")
@click.option("--z-variation", "z_variation", type=float, default=None, metavar="AMPLITUDE",
              help="Mill unevenly: each slice's thickness varies smoothly by up to this fraction of the step "
                   "(0.3: +-30 %%, at most 0.5), plus --z-events abrupt ones; ground_truth.json records each "
                   "slice's true depth (z_nm).  [default: even milling]")
@click.option("--z-length", "z_length", type=float, default=None,
              help="With --z-variation: correlation length of the smooth variation, in slices.  [default: 12]")
@click.option("--z-events", "z_events", type=int, default=None,
              help="With --z-variation: abrupt slices, alternately double-thick and 0.3 steps thin.  [default: 2]")
@click.option("--out-format", type=click.Choice(["tiff", "zarr"]), default="tiff", show_default=True)
@click.option("--clean", is_flag=True, help="Also write the undistorted noise-free volume.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier amst synth output in OUT (only the files amst wrote there).")
def synth(out, preset, shape, voxel_size, seed, dtype, no_marks, from_volume, cap_height, texture, warp_z_scale,
          autofocus_at, z_variation, z_length, z_events, out_format, clean, workers, overwrite) -> None:
    """Write a synthetic FIB-SEM stack with exact ground truth to OUT."""
    from tqdm import tqdm

    from .synth import SynthConfig, synthesize
    from .synth.milling import MillingParams
    from .synth.volume import volume_defaults

    if z_variation is None and (z_length is not None or z_events is not None):
        raise click.UsageError("--z-length and --z-events shape uneven milling: give --z-variation AMPLITUDE too")
    shape_of_milling = {k: v for k, v in (("length", z_length), ("events", z_events)) if v is not None}
    milling = None if z_variation is None else MillingParams(z_variation, **shape_of_milling)
    if from_volume:
        default_shape, default_voxel = volume_defaults(from_volume, voxel_size)
        if milling is not None:  # uneven slices reach deeper than even ones: leave room
            default_shape = (max(int(default_shape[0] / (1 + milling.amplitude)) - 2, 1), *default_shape[1:])
        shape = tuple(shape) if shape else default_shape
        voxel_size = tuple(voxel_size) if voxel_size else default_voxel
    shape = tuple(shape or (100, 1024, 1024))
    voxel_size = tuple(voxel_size or (8.0, 5.0, 5.0))
    cfg = SynthConfig(shape=shape, preset=preset, seed=seed, dtype=dtype,
                      voxel_size=VoxelSize.from_values(*voxel_size), marks=False if no_marks else None,
                      texture=texture, warp_z_scale=warp_z_scale, autofocus_at=tuple(autofocus_at or ()),
                      volume=from_volume, cap_height=cap_height, z_variation=milling)
    t0 = time.perf_counter()
    with tqdm(total=shape[0], desc="synth", unit="slice") as bar:
        synthesize(out, cfg, out_format=out_format, write_clean=clean, workers=workers, progress=bar.update,
                   overwrite=overwrite)
    click.echo(f"wrote {shape[0]} slices to {out} in {time.perf_counter() - t0:.1f} s "
               f"(ground truth: {Path(out) / 'ground_truth.json'})")


def _prealign_options(f: Callable) -> Callable:
    """Options shared by ``amst prealign`` and ``amst run``."""
    opts = [
        click.option("--roi", cls=_NumbersOption, max_values=4, default=None, metavar="X Y W H|auto",
                     type=_Numbers(float, 4, ("auto",), "X Y W H"),
                     help=_help("Template-matching region: four numbers (needs --roi-units), or auto.", "roi")),
        click.option("--roi-units", type=click.Choice(["px", "nm"]), default=None,
                     help="Units of --roi numbers; required with them (no guessing)."),
        click.option("--roi-slice", type=int, default=None,
                     help=_help("Slice of --roi.", "roi_slice", "the middle slice")),
        click.option("--search-margin", type=int, default=None, help=_help("TM search margin in px.", "search_margin")),
        click.option("--min-score", type=float, default=None, help=_help("Lowest accepted NCC peak.", "min_score")),
        click.option("--gaps", cls=_NumbersOption, default=None, metavar="G [G ...]", type=_Numbers(int),
                     help=_help("z-gaps of pairs for features/xcorr.", "gaps")),
        click.option("--canvas", type=click.Choice(["union", "input"]), default=None,
                     help=_help("Output canvas: the union of the shifted slices, or the input's.", "canvas")),
        click.option("--xcorr-prefilter", type=click.Choice(["gaussian", "edges", "none"]), default=None,
                     help=_help("Filter before phase correlation.", "xcorr_prefilter")),
        click.option("--pattern", default=None, help=f"Glob for TIFF folders.  [default: {DEFAULT_PATTERN}]"),
        click.option("--dataset", default=None,
                     help="HDF5 dataset / Zarr array / N5 dataset (scale level, e.g. s0) inside INPUT."),
        click.option("--channel", type=click.IntRange(min=0), default=None,
                     help=_help("Channel of a multi-channel input (Janelia .dat detector, OME-Zarr c axis).",
                                "channel", "the first")),
        click.option("--allow-pad", is_flag=True, default=None, help="Pad slices of differing shape."),
        click.option("--skip-bad", is_flag=True, default=None,
                     help="Continue past unreadable slices (they are marked blank)."),
        click.option("--workers", type=int, default=None,
                     help=_help("Processes/threads.", "workers", "all cores")),
        _voxel_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _flat_prealign(kw: dict[str, Any]) -> dict[str, Any]:
    """The shared options as flat options of :func:`amst.config.build_config` (None: not given)."""
    roi = kw.pop("roi", None)
    if roi is not None and roi != "auto":
        if kw.get("roi_units") is None:
            raise click.BadParameter("say whether X Y W H are in px or nm with --roi-units", param_hint="--roi")
        roi = list(roi)
    gaps = kw.pop("gaps", None)
    vs = kw.pop("voxel_size", None)
    kw = {k: v for k, v in kw.items() if v is not None}
    return {**kw, "roi": roi, "gaps": list(gaps) if gaps else None, "voxel_size": list(vs) if vs else None}


_PREALIGN_METHODS = ["tm", "features", "xcorr"]


@main.command("prealign")
@click.argument("input")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--prealign", "method", type=click.Choice(_PREALIGN_METHODS), default=None,
              help=_help("Pre-alignment method.", "prealign"))
@click.option("--method", "method_alias", type=click.Choice(_PREALIGN_METHODS), default=None, hidden=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML config (as for amst run; its prealign, input and execution sections apply).")
@click.option("--write-stack", is_flag=True, help="Also write the pre-aligned stack.")
@click.option("--out-format", type=click.Choice(["zarr", "tiff"]), default="zarr", show_default=True,
              help="Format of the pre-aligned stack.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier amst prealign output in OUT (only the files amst wrote there).")
@_prealign_options
def prealign_cmd(input, out, method, method_alias, config_file, write_stack, out_format, overwrite, **kw) -> None:
    """Pre-align INPUT by translations; writes OUT/transforms.json (and the stack)."""
    from tqdm import tqdm

    from . import prealign as prealign_module
    from .config import build_config
    from .outdir import OwnedEntry, claim_output, mark_complete, write_ownership
    from .stack import create_writer
    from .warp import warp_slice

    if method and method_alias and method != method_alias:
        raise click.UsageError(f"--method is the old name of --prealign; give one of them, not "
                               f"--prealign {method} and --method {method_alias}")
    cfg = build_config(config_file, prealign=method or method_alias, **_flat_prealign(kw))
    log.debug("configuration: %s", cfg.to_dict())
    stack = open_stack(input, pattern=cfg.input.pattern, dataset=cfg.input.dataset,
                       voxel_size=_voxel(cfg.input.voxel_size), channel=cfg.input.channel,
                       allow_pad=cfg.input.allow_pad, skip_bad=cfg.input.skip_bad)
    validate_for_stack = getattr(prealign_module, "validate_for_stack", None)
    if validate_for_stack is not None:
        validate_for_stack(cfg.prealign, len(stack), tuple(stack.shape[1:]), stack.voxel_size)
    # Everything that can be refused has been checked: only now is OUT touched.
    stack_name = "prealigned.zarr" if out_format == "zarr" else "prealigned"
    entries = [OwnedEntry("transforms.json", "file")]
    if write_stack:
        entries.append(OwnedEntry(stack_name, out_format, ("0",) if out_format == "zarr" else ()))
    outp = Path(out)
    ownership = claim_output(outp, kind="prealign", entries=entries, overwrite=overwrite,
                             protected={"the input": stack.path, "the config file": config_file})
    method = cfg.prealign.method
    t0 = time.perf_counter()
    with tqdm(total=len(stack), desc=f"prealign ({method})", unit="slice") as bar:
        res = prealign_module.prealign(stack, cfg.prealign, cfg.execution.workers, bar.update)
    seconds = time.perf_counter() - t0
    tf = prealign_module.to_transforms(stack, res, cfg.prealign.canvas)
    tf.extra["prealign_seconds"] = seconds
    if write_stack:
        w = create_writer(outp / stack_name, out_format, (len(stack), *tf.canvas_shape_yx), stack.dtype,
                          stack.voxel_size, names=stack.names)
        if out_format == "tiff":  # the marker names the slice files, so --overwrite can prove they are amst's
            ownership.entries[-1] = OwnedEntry(stack_name, "tiff", names=tuple(w.names))
            write_ownership(outp, ownership)
        for z in tqdm(range(len(stack)), desc="write", unit="slice"):
            w.write(z, warp_slice(stack.read(z), tf.slices[z].affine, tf.canvas_shape_yx, "linear"))
    tf.save(outp / "transforms.json")
    mark_complete(outp, ownership)
    bad = [s for s in tf.slices if s.status != "ok"]
    info = tf.extra.get("prealign_info", {})
    used = info.get("method", method)
    click.echo(f"pre-aligned {len(stack)} slices ({used}) in {seconds:.1f} s "
               f"({seconds / len(stack):.3f} s/slice); canvas {tf.canvas_shape_yx[0]}x{tf.canvas_shape_yx[1]}")
    if info.get("fallback_reason"):
        click.echo(f"WARNING pre-alignment: {info.get('method_requested')} was asked for, {used} was used: "
                   f"{info['fallback_reason']}")
    if bad:
        click.echo(f"{len(bad)} slice(s) flagged: " + ", ".join(f"{s.index} ({s.status})" for s in bad[:20]))


@main.command("run")
@click.argument("input")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--prealign", "prealign_method", type=click.Choice(["tm", "features", "xcorr", "none"]), default=None,
              help=_help("Pre-alignment method.", "prealign"))
@click.option("--prealigned", default=None, help="A stack aligned elsewhere (e.g. Fiji) to build the template from.")
@click.option("--backend", type=click.Choice(["elastix", "fast"]), default=None,
              help=_help("Affine back-end.", "backend"))
@click.option("--median-radius", type=int, default=None,
              help=_help("Template median radius in slices.", "median_radius"))
@click.option("--passes", type=click.IntRange(1, 2), default=None,
              help=_help("Registration passes (the second builds its template from corrected slices).", "passes"))
@click.option("--order", type=click.Choice(["cubic", "linear", "nearest"]), default=None,
              help=_help("Interpolation of the output.", "order"))
@click.option("--out-format", type=click.Choice(["zarr", "tiff", "tiff-stack", "mrc"]), default=None,
              help=_help("Output stack format.", "out_format"))
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default=None,
              help=_help("OME-Zarr version of a zarr output (0.5: Zarr v3).", "ngff_version"))
@click.option("--pyramid-levels", type=int, default=None,
              help=_help("OME-Zarr resolution levels written.", "pyramid_levels"))
@click.option("--max-fallback-fraction", type=float, default=None,
              help=_help("Stop the run when more than this share of non-blank slices falls back (1: never).",
                         "max_fallback_fraction"))
@click.option("--block-size", type=int, default=None,
              help=_help("Slices per work unit.", "block_size", "from the slice count and workers"))
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:port).")
@click.option("--cluster", type=click.Choice(["slurm"]), default=None,
              help="Start workers with dask-jobqueue (options in the config's execution.slurm section).")
@click.option("--elastic/--no-elastic", "elastic", default=None,
              help=_help("After the affine, correct local (non-affine) jumps with a smooth displacement field, only "
                         "where a slice's local residual to its template is significant and its neighbours do not "
                         "share it (transforms.json version 2).", "elastic"))
@click.option("--z-spacing", "z_spacing", type=click.Choice(["off", "estimate", "resample"]), default=None,
              help=_help("Measure each slice's depth from the images after alignment (estimate: into "
                         "transforms.json as z_nm and the report); resample: also write OUT/aligned_z on an even "
                         "z grid at the nominal step.", "z_spacing"))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML config.")
@click.option("--overwrite", is_flag=True, help="Replace an OUT that holds a run with other parameters.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--no-report", is_flag=True, help="Skip OUT/report/index.html.")
@_prealign_options
def run_cmd(input, out, prealign_method, config_file, overwrite, quiet, no_report, **kw) -> None:
    """Align INPUT with AMST into OUT (re-run the same command to resume)."""
    from .pipeline import align

    flat = _flat_prealign(kw)
    res = align(input, out, config_file, overwrite=overwrite, progress=not quiet, prealign=prealign_method, **flat)
    if not no_report:
        from .quality.report import build_report

        t0 = time.perf_counter()
        page = build_report(out)
        click.echo(f"report: {page} ({time.perf_counter() - t0:.1f} s)")
        from .transforms_io import load_transforms

        res.transforms = load_transforms(Path(out) / "transforms.json")  # now with the residual's flags (check)
    counts = {s: res.statuses.count(s) for s in STATUSES}
    click.echo(f"aligned {len(res.statuses)} slices -> {res.output_stack}  ("
               + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ")")
    comb = res.transforms.extra.get("combine", {})
    if comb.get("method") == "significance":
        click.echo(f"shape corrections applied to {comb.get('linear_applied', 0)} slice(s) (they stood out of the "
                   f"registration's measured noise by more than {comb.get('significance'):g}x and the nearest "
                   f"neighbours confirmed them); translation: {100 * comb.get('translation_weight', 0):.0f} % "
                   f"registration, {100 - 100 * comb.get('translation_weight', 0):.0f} % pre-alignment (by their "
                   "measured noise)")
    *registered, resampled = res.recomputed_per_pass
    click.echo("slices computed by this run: registered per pass: " + " ".join(str(v) for v in registered)
               + f"; resampled: {resampled}")
    click.echo("time per slice (core-s, idle: workers waiting): "
               + "  ".join(f"{k} {v:.3f}" for k, v in res.timings_per_slice.items() if v > 0))
    info = res.transforms.extra.get("prealign_info", {})
    if info.get("fallback_reason"):
        click.echo(f"WARNING pre-alignment: {info.get('method_requested')} was asked for, {info.get('method')} was "
                   f"used: {info['fallback_reason']}")
    flagged = [s for s in res.transforms.slices if s.status != "ok"]
    for s in flagged[:20]:
        click.echo(f"  slice {s.index} ({s.name}): {s.status} - {s.metrics.get('reason', s.metrics.get('prealign_flag', ''))}")
    checks = [s for s in res.transforms.slices if s.status == "ok" and s.metrics.get("check")]
    for s in checks[:20]:
        click.echo(f"  slice {s.index} ({s.name}): inspect - {s.metrics['check']}")


@main.command("apply")
@click.argument("transforms", type=click.Path(exists=True, dir_okay=False))
@click.argument("input")
@click.argument("out")
@click.option("--order", type=click.Choice(["cubic", "linear", "nearest"]), default="cubic", show_default=True,
              help="nearest for label stacks (values kept exactly).")
@click.option("--out-format", type=click.Choice(["zarr", "tiff"]), default=None,
              help="Default: zarr if OUT ends in .zarr, else tiff.")
@click.option("--pattern", default=None)
@click.option("--dataset", default=None)
@click.option("--workers", type=int, default=None)
@click.option("--channel", type=int, default=None, help="Detector channel of a multi-channel input (.dat, OME-Zarr).")
@click.option("--overwrite", is_flag=True)
@click.option("--z-spacing", "z_spacing", type=click.Choice(["off", "resample"]), default="off", show_default=True,
              help="resample: write on an even z grid at the nominal step, from the slice depths (z_nm) in "
                   "TRANSFORMS (labels with --order nearest take the nearer slice).")
@_voxel_option
def apply_cmd(transforms, input, out, order, out_format, pattern, dataset, workers, channel, overwrite, z_spacing,
              voxel_size) -> None:
    """Re-apply saved TRANSFORMS to another channel or label stack INPUT (voxel size: the run's)."""
    from .pipeline import apply

    path = apply(transforms, input, out, order=order, out_format=out_format, workers=workers, overwrite=overwrite,
                 pattern=pattern, dataset=dataset, channel=channel, voxel_size=_voxel(voxel_size),
                 z_spacing=z_spacing)
    click.echo(f"wrote {path}")


@main.command("zspacing")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--max-gap", type=int, default=None,
              help="Measure slice pairs up to this far apart.  [default: the run's z_spacing.max_gap, 2]")
@click.option("--calibration", type=click.Choice(["nominal", "in-plane"]), default=None,
              help="nominal: the mean thickness is the voxel size's z step; in-plane: the scale from the images "
                   "too (right only for isotropic imaging).  [default: the run's z_spacing.calibration, nominal]")
@click.option("--workers", type=int, default=None, help="Threads (default: all cores).")
def zspacing_cmd(out, max_gap, calibration, workers) -> None:
    """Estimate each slice's depth in the aligned run OUT and record it in OUT/transforms.json (z_nm)."""
    from .zspacing.run_folder import estimate_run_depths

    summary = estimate_run_depths(Path(out), max_gap=max_gap, calibration=calibration, workers=workers)
    rng = summary["thickness_range_nm"]
    click.echo(f"z spacing of {out}: mean thickness {summary['mean_thickness_nm']:.2f} nm (nominal "
               f"{summary['nominal_nm']:.2f}), range {rng[0]:.2f}-{rng[1]:.2f} nm, isotropy ratio "
               f"{summary['isotropy_ratio']:.3f}; written to {Path(out) / 'transforms.json'}")


@main.command()
@click.argument("out", type=click.Path(file_okay=False), default="amst-demo")
@click.option("--backend", type=click.Choice(["elastix", "fast"]), default="fast", show_default=True)
@click.option("--workers", type=int, default=None)
def demo(out, backend, workers) -> None:
    """Image a shipped crop of real FIB-SEM with known drift and align it: TM only vs AMST, against ground truth."""
    from .demo import run_demo

    run_demo(Path(out), backend=backend, workers=workers, echo=click.echo)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ground_truth.json of a synthetic stack.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--compare", type=click.Path(exists=True, file_okay=False), default=None,
              help="Another run: red/cyan overlay of the reslices (first RUN red, this one cyan).")
@click.option("--crop-size", type=int, default=512, show_default=True)
@click.option("--report/--no-report", default=False, help="Also (re)build each run's report.")
def evaluate(runs, truth, json_file, compare, crop_size, report) -> None:
    """Measure runs: residual per crop, neighbour NCC, ground-truth error; one table."""
    from .quality.evaluate import comparison_table, evaluate_run, write_json

    t0 = time.perf_counter()
    evals = [evaluate_run(r, truth, crop_size=crop_size) for r in runs]
    click.echo(comparison_table(evals))
    if json_file:
        write_json(evals, json_file)
        click.echo(f"figures: {json_file}")
    if compare:
        from .quality.plots import save_overlay

        other = evaluate_run(compare, None, crop_size=crop_size)
        vs = evals[0].transforms.voxel_size
        target = Path(runs[0]) / "report"
        target.mkdir(exist_ok=True)
        for axis in ("xz", "yz"):
            save_overlay(getattr(evals[0].sweep, f"reslice_{axis}"), getattr(other.sweep, f"reslice_{axis}"),
                         target / f"compare_{axis}.png", (vs.z / vs.x) if vs else 1.0,
                         f"{axis}: {Path(runs[0]).name} (red) vs {Path(compare).name} (cyan); grey = agreement")
        click.echo(f"overlays: {target / 'compare_xz.png'}, {target / 'compare_yz.png'}")
    if report:
        from .quality.report import build_report

        for e in evals:
            click.echo(f"report: {build_report(e.run, truth, e)}")
    click.echo(f"evaluated in {time.perf_counter() - t0:.1f} s")


@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None)
def report_cmd(out, truth) -> None:
    """Rebuild OUT/report/index.html."""
    from .quality.report import build_report

    click.echo(f"report: {build_report(out, truth)}")
