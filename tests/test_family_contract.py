"""Every family in `FAMILIES` against the protocols of `fewstep.families.base`, on tiny weights.

The members checked are read from the protocols (`Family`, `CellPipeline`, `PromptEncoder`), so
one added later is checked on every family without an edit here: it must exist with the
protocol's parameters and attribute type, and a grid-side `Family` method is called on every
backbone x adapter of the demo config, with a value per parameter name (`arguments`), and must
return what its annotation says. The job side runs for real: each family's prompt encoder, and
its cell pipeline on a batch of two (condition, stack, denoise with a per-step callback, decode
to uint8, the timer's marks), built by `cell_pipeline` once from prepared tiny weights and once
from the tiny components its folder's ``tiny.py:tiny_cell`` makes in memory (no files): a family
added to `FAMILIES` needs no edit here.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.errors import ConfigError
from fewstep.families import FAMILIES, base
from fewstep.grid import EAGER_SWITCHES
from tests.conftest import study_of

CPU = torch.device("cpu")
STEPS = 2
SEEDS = [0, 7]
#: the items' reference: a demo identity (klein's cell pipeline reads that identity's photo)
REFERENCE_ID = "astronaut"


def hints(obj: typing.Any) -> dict[str, typing.Any]:
    """`obj`'s annotations resolved in `base` (which imports torch and ModelSpec for type checks only)."""
    from fewstep.registry.spec import ModelSpec

    return typing.get_type_hints(obj, {**vars(base), "torch": torch, "ModelSpec": ModelSpec})


def members(protocol: type) -> dict[str, typing.Any]:
    """The protocol's own members: name -> its function (methods) or annotation (attributes)."""
    annotations = hints(protocol)
    methods = {n: f for n, f in vars(protocol).items() if inspect.isfunction(f) and not n.startswith("_")}
    return {**{n: annotations[n] for n in protocol.__annotations__}, **methods}


def returns(function: typing.Callable) -> typing.Any:
    return hints(function)["return"]


def conforms(value: typing.Any, hint: typing.Any) -> bool:
    """`value` is of type `hint` (containers checked element by element; `Any` and protocols pass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is type(None) and value is None:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()
        )
    if origin in (list, Sequence):
        return isinstance(value, Sequence) and all(conforms(v, args[0]) for v in value)
    if origin is tuple:
        items = args[:1] * len(value) if args[1:] == (...,) else args
        return isinstance(value, tuple) and all(conforms(v, a) for v, a in zip(value, items, strict=True))
    if origin is frozenset:
        return isinstance(value, frozenset) and all(conforms(v, args[0]) for v in value)
    if isinstance(hint, type) and getattr(hint, "_is_protocol", False):
        return True  # checked member by member where the protocol is used
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def assert_signature(obj: typing.Any, name: str, function: typing.Callable) -> None:
    wanted = [p for p in inspect.signature(function).parameters if p != "self"]
    got = list(inspect.signature(getattr(obj, name)).parameters)
    assert got == wanted, f"{type(obj).__name__}.{name}{tuple(got)}: the protocol has {tuple(wanted)}"


def test_the_checks_refuse_what_breaks_the_contract():
    """A renamed parameter, a wrong element type, a bool for a float: each check fails."""

    class Renamed(type(FAMILIES["flux"])):
        def check_adapter(self, name, adapter):
            pass

    with pytest.raises(AssertionError, match=r"check_adapter\('name', 'adapter'\)"):
        assert_signature(Renamed(), "check_adapter", base.Family.check_adapter)
    assert conforms({"flux-dev": ("transformer/",)}, returns(base.Family.cell_weights))
    assert not conforms({"flux-dev": ["transformer/"]}, returns(base.Family.cell_weights))
    assert conforms(None, returns(base.Family.guidance)) and not conforms(True, returns(base.Family.guidance))
    assert not conforms(["flux-dev", 3], returns(base.Family.cell_models))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> typing.Any:
    """The demo's `Study` with every family's generation and text-encoder models prepared (tiny)."""
    from conftest import demo_yaml

    from fewstep.core.config import validate
    from fewstep.jobs.prepare import prepare_model

    root = tmp_path_factory.mktemp("contract")
    raw = demo_yaml() | {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")}
    config = validate(raw)
    names = set()
    for name, family in FAMILIES.items():
        for backbone, adapter in cases(config, name):
            names |= set(family.cell_models(backbone, adapter))
        names.add(prompt_model(config, name))
    study = study_of(config)
    for name in sorted(names):
        prepare_model(study_of(study), name)
    return study


def cases(config: dict, name: str) -> list[tuple[dict, dict]]:
    """Each backbone of family `name` in the config with each adapter it runs, and bare."""
    backbones = [b for b in config["backbones"].values() if b["family"] == name]
    kinds = FAMILIES[name].adapter_kinds
    adapters = [a for a in config["adapters"].values() if a["kind"] in kinds] + [{"kind": "none"}]
    return [(b, a) for b in backbones for a in adapters]


def prompt_model(config: dict, name: str) -> str:
    models = [b["model"] for b in config["backbones"].values() if b["family"] == name]
    return FAMILIES[name].prompt_model(models)


def arguments(config: dict, name: str, backbone: dict, adapter: dict) -> dict[str, typing.Any]:
    """A value for each parameter name the protocols use, from the demo config."""
    return {
        "key": "contract",
        "backbone": backbone,
        "adapter": adapter,
        "configured": list(config["scoring"]["metrics"]),
        "models": [b["model"] for b in config["backbones"].values() if b["family"] == name],
        "backbones": [b for b in config["backbones"].values() if b["family"] == name],
        "resolution": config["resolution"],
        "config": config,
        "model": prompt_model(config, name),
        "acceleration": dict(EAGER_SWITCHES),
        "device": CPU,
        "dtype": torch.float32,
        # a benchmark summary row none of them times: each family reads its own rows only
        "row": {"cell": "contract/none/1", "per_step_s": "0.1", "decode_s": "0.1"},
    }


def test_every_family_in_the_demo_config():
    """The contract below runs on the demo's backbones and adapters: every family has some."""
    from conftest import demo_yaml

    from fewstep.core.config import validate

    config = validate(demo_yaml())
    for name in FAMILIES:
        assert any(a["kind"] != "none" for _, a in cases(config, name)), name


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grid_side_members_answer_as_the_protocol_says(name):
    """Attributes have the annotated types; methods the protocol's parameters and return types,
    on every backbone x adapter of the family in the demo config. Job-side methods (those
    taking a device) run in the tests below."""
    from conftest import demo_yaml

    from fewstep.core.config import validate

    config, family = validate(demo_yaml()), FAMILIES[name]
    assert family.name == name
    for member, spec in members(base.Family).items():
        assert hasattr(family, member), f"{name} lacks Family.{member}"
        if not inspect.isfunction(spec):
            assert conforms(getattr(family, member), spec), f"{name}.{member}: not {spec}"
            continue
        assert_signature(family, member, spec)
        parameters = [p for p in inspect.signature(spec).parameters if p != "self"]
        if "device" in parameters or "kit" in parameters:
            continue  # the job side runs below; report_parts on real tables in test_report*.py
        for backbone, adapter in cases(config, name):
            args = arguments(config, name, backbone, adapter)
            missing = [p for p in parameters if p not in args]
            assert not missing, f"Family.{member}: give the contract test a value for {missing}"
            value = getattr(family, member)(**{p: args[p] for p in parameters})
            assert conforms(value, returns(spec)), f"{name}.{member} -> {value!r}: not {returns(spec)}"


@pytest.fixture(scope="module")
def encoded(demo) -> dict[str, dict[str, torch.Tensor]]:
    """Each family's prompt embedding through its `prompt_encoder` (checked against `PromptEncoder`)."""
    out = {}
    for name, family in FAMILIES.items():
        backbone, adapter = cases(demo, name)[0]
        args = arguments(demo, name, backbone, adapter)
        encoder = family.prompt_encoder(**{p: args[p] for p in ("config", "model", "device", "dtype")})
        for member, spec in members(base.PromptEncoder).items():
            assert_signature(encoder, member, spec)
        embedding = encoder.encode("a red cup on a table", backbone)
        assert embedding and conforms(embedding, returns(base.PromptEncoder.encode))
        assert all(t.shape[0] == 1 and torch.isfinite(t).all() for t in embedding.values())
        out[name] = embedding
    return out


def tiny_cell(config: dict, name: str, backbone: dict, adapter: dict) -> base.TinyCell:
    """The family's seeded tiny components made in memory and an item's precomputed inputs of
    their shapes, from ``tiny_cell`` in its folder's ``tiny.py`` (no file read)."""
    package = type(FAMILIES[name]).__module__.rsplit(".", 1)[0]
    module = importlib.import_module(f"{package}.tiny")
    assert hasattr(module, "tiny_cell"), f"{package}.tiny: give it tiny_cell(config, backbone, adapter)"
    made = module.tiny_cell(config, backbone, adapter)
    assert isinstance(made, base.TinyCell), (
        f"{package}.tiny.tiny_cell: return a fewstep.families.base.TinyCell"
    )
    family = FAMILIES[name]
    precomputed = family.reference_file(adapter) is not None or family.needs_identity_embeddings(adapter)
    assert (made.reference is None) == (not precomputed), "a reference exactly where the job reads a file"
    return made


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_reference_encoders_embed_what_the_cell_pipelines_read(demo, name):
    """`reference_encoder` of every adapter file the family's `reference_file` names, loaded from
    the prepared tiny weights, embeds a picture in the shape its cells read; a family naming no
    file refuses the call in one line."""
    family = FAMILIES[name]
    files = {family.reference_file(a): (b, a) for b, a in cases(demo, name) if family.reference_file(a)}
    if not files:
        with pytest.raises(ConfigError, match="read no reference embeddings"):
            family.reference_encoder(demo, "plain", CPU, torch.float32)
        return
    picture = Image.fromarray(np.full((48, 40, 3), 127, np.uint8))
    for file, (backbone, adapter) in files.items():
        encoder = family.reference_encoder(demo, file, CPU, torch.float32)
        for member, spec in members(base.ReferenceEncoder).items():
            assert_signature(encoder, member, spec)
        embeds = encoder.encode(picture)
        expected = tiny_cell(demo, name, backbone, adapter).reference
        assert embeds.shape == expected["image_embeds"].shape and torch.isfinite(embeds).all(), file


def run_cell_pipeline(
    name: str,
    pipeline: typing.Any,
    prompt: dict,
    adapter: dict,
    side: tuple[int, int],
    item: base.TinyCell,
    alone: bool = False,
):
    """Every `CellPipeline` member on a batch of two images of `STEPS` steps, the item's reference
    inputs those of `item`; `alone`: and the second seed's image rendered by itself is the batch's."""
    for member, spec in members(base.CellPipeline).items():
        assert hasattr(pipeline, member), f"{name}'s cell pipeline lacks {member}"
        if inspect.isfunction(spec):
            assert_signature(pipeline, member, spec)
        else:
            assert conforms(getattr(pipeline, member), spec)
    prompt = {k: v.to(pipeline.device, pipeline.dtype) for k, v in prompt.items()}
    inputs = base.ItemInputs(prompt, REFERENCE_ID, item.reference, item.reference_meta)
    with torch.no_grad():
        condition, seconds = pipeline.condition(inputs)
        assert isinstance(seconds, float) and seconds >= 0
        batch = pipeline.stack([condition, pipeline.condition(inputs)[0]])
        steps: list[base.Step] = []
        result = pipeline.denoise(batch, SEEDS, STEPS, on_step=steps.append)
        pixels = pipeline.decode(result.latents)
        result.timer.mark()  # as the generation job does after decoding
        clean = pipeline.decode(steps[-1].predicted_clean)
    assert isinstance(result, base.Denoised) and result.latents.shape[0] == len(SEEDS)
    evaluations = len(result.sigmas)
    assert evaluations >= STEPS and len(result.adapter_active) == evaluations
    assert any(result.adapter_active) == (adapter["kind"] != "none")
    intervals = result.timer.seconds()
    assert len(intervals) == evaluations + 1 and all(s >= 0 for s in intervals)
    assert [s.index for s in steps] == list(range(evaluations))
    assert [s.adapter_active for s in steps] == result.adapter_active
    for step in steps:
        assert (
            isinstance(step, base.Step)
            and isinstance(step.sigma, float)
            and isinstance(step.sigma_next, float)
        )
        assert step.prediction.shape == step.predicted_clean.shape == result.latents.shape
        assert all(isinstance(k, str) for k in step.probes)
    assert [s.sigma for s in steps] == pytest.approx(result.sigmas)
    width, height = side
    for images in (pixels, clean):
        assert images.dtype == torch.uint8 and tuple(images.shape) == (len(SEEDS), height, width, 3)
    assert not torch.equal(pixels[0], pixels[1])  # two seeds, two images
    if alone:
        with torch.no_grad():  # up to float rounding of batched matrix products
            single = pipeline.decode(pipeline.denoise(pipeline.stack([condition]), SEEDS[1:], STEPS).latents)
        assert (single[0].int() - pixels[1].int()).abs().max() <= 1


def side(demo: dict, name: str, backbone: dict) -> tuple[int, int]:
    """The width and height of the family's images for `backbone` (`Family.image_size`)."""
    size = FAMILIES[name].image_size(backbone, demo["resolution"])
    return size["width"], size["height"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cell_pipeline_from_prepared_weights_runs_every_member(demo, encoded, name):
    """`cell_pipeline` on each backbone x adapter of the family (bare: the injected test)."""
    family = FAMILIES[name]
    for backbone, adapter in [(b, a) for b, a in cases(demo, name) if a["kind"] != "none"]:
        args = arguments(demo, name, backbone, adapter)
        call = {p: args[p] for p in inspect.signature(base.Family.cell_pipeline).parameters if p in args}
        pipeline = family.cell_pipeline(**call)
        item = tiny_cell(demo, name, backbone, adapter)
        run_cell_pipeline(name, pipeline, encoded[name], adapter, side(demo, name, backbone), item)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cell_pipeline_from_injected_components_runs_every_member(demo, encoded, name):
    """`cell_pipeline` built from the family's tiny components made in memory, as a diffusers
    pipeline is from its components, with and without its adapter."""
    family = FAMILIES[name]
    for backbone, adapter in cases(demo, name)[-2:]:  # the last backbone, with its last adapter and bare
        made = tiny_cell(demo, name, backbone, adapter)
        args = arguments(demo, name, backbone, adapter)
        call = {p: args[p] for p in inspect.signature(base.Family.cell_pipeline).parameters if p in args}
        built = family.cell_pipeline(**call, components=made.components)
        run_cell_pipeline(name, built, encoded[name], adapter, side(demo, name, backbone), made, alone=True)
