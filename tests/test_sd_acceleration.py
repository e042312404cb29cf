"""SD acceleration switches on tiny UNets: eager untouched, compile faithful, TaylorSeer's skips exact."""

from __future__ import annotations

import copy

import pytest
import torch

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.families import FAMILIES
from fewstep.families.sd import acceleration, cell, pipeline
from fewstep.families.sd.tiny import tiny_cell
from fewstep.grid import EAGER_SWITCHES, Grid
from tests.conftest import study_of

CPU = torch.device("cpu")


def switches(**on) -> dict:
    return {**EAGER_SWITCHES, **on}


def taylorseer(interval: int, warmup: int, **on) -> dict:
    return switches(cache="taylorseer", cache_interval=interval, cache_warmup=warmup, **on)


def build(config: dict, name: str, adapter: str, acceleration_switches: dict | None, **options):
    """A tiny SD cell pipeline (seeded, in memory) with these switches (`options`: torch.compile's)."""
    built = tiny_pipeline(config, name, adapter, switches())
    if acceleration_switches is not None:
        built.accelerated = acceleration.Accelerated(built.pipe, acceleration_switches, CPU, options)
    return built


def tiny_pipeline(config, name: str, adapter: str, acceleration_switches: dict) -> cell.SDCellPipeline:
    """The family's cell pipeline of a demo cell, built from the family's seeded tiny components."""
    study = study_of(config)
    backbone, entry = study.backbones[name], study.adapters[adapter]
    components = tiny_cell(study, backbone, entry).components
    return FAMILIES[name].cell_pipeline(
        study, backbone, entry, acceleration_switches, CPU, torch.float32, components=components
    )


def condition(built: cell.SDCellPipeline, name: str, adapter: dict) -> pipeline.Condition:
    """Random prompt and reference embeddings of the tiny shapes (seeded)."""
    torch.manual_seed(1)
    unet = built.pipe.unet.config
    prompt = {"prompt_embeds": torch.randn(1, 8, unet.cross_attention_dim)}
    prompt["negative_prompt_embeds"] = torch.randn_like(prompt["prompt_embeds"])
    if name == "sdxl":
        width = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
        pooled = ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        prompt |= {k: torch.randn(1, width) for k in pooled}
    tensors = tiny_cell(None, {"family": name}, adapter).reference
    return pipeline.Condition(prompt, None if tensors is None else [tensors["image_embeds"]])


def latents(built: cell.SDCellPipeline, cond: pipeline.Condition, steps: int) -> torch.Tensor:
    with torch.no_grad():
        return built.denoise([cond], [0], steps).latents


@pytest.fixture
def demo(raw_demo) -> dict:
    return validate(copy.deepcopy(raw_demo))


def test_sd_cells_take_compile_fp8_and_taylorseer_and_refuse_the_block_caches(raw_demo):
    raw_demo["accelerations"] = {
        "fast": {"compile": "regional", "fp8": "dynamic"},
        "taylor": {"cache": "taylorseer", "cache_interval": 2, "cache_warmup": 1},
        "mag": {"cache": "mag"},
    }
    raw_demo["cells"][1]["accelerations"] = ["eager", "fast", "taylor"]
    ids = [c.id for c in Grid(study_of(validate(copy.deepcopy(raw_demo)))).cells]
    assert {"sd15/sd-style+fast/4", "sdxl/sd-object+taylor/4", "sd15/sd-style/4"} <= set(ids)
    raw_demo["cells"][1]["accelerations"] = ["mag"]
    with pytest.raises(
        ConfigError,
        match=r"^config accelerations.mag.cache: sd15 backbones do not take mag; they take taylorseer; "
        r"set none, or leave 'mag' off sd15's cells$",
    ):
        Grid(study_of(validate(raw_demo)))


def test_switches_off_build_nothing_and_a_taylorseer_that_computes_every_call_is_eager(demo):
    """All off: no wrapper, the UNet's own forward. Interval 1: every call computed, the same latents
    bit for bit (the wrapper hands the UNet's output through untouched)."""
    adapter = demo["adapters"]["sd-style"]
    off = FAMILIES["sd15"]
    assert off.acceleration_switches == {"compile:regional", "compile:full", "fp8", "cache:taylorseer"}
    eager = tiny_pipeline(demo, "sd15", "sd-style", switches())
    assert eager.accelerated is None and "forward" not in vars(eager.pipe.unet)
    every = build(demo, "sd15", "sd-style", taylorseer(1, 1))
    cond = condition(eager, "sd15", adapter)
    expected = latents(eager, cond, 4)
    assert torch.equal(latents(every, cond, 4), expected)
    assert every.accelerated.tally == {"calls": 5, "computed": 5}  # PNDM: 4 steps, 5 UNet calls


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_taylorseer_extrapolates_each_skipped_call_from_the_last_two_computed(demo, name):
    """Interval 3 after 2: of 6 calls 0, 1, 3 computed; 2, 4, 5 the first-order extrapolation of
    the last two computed outputs (float32 factors, diffusers' arithmetic), exactly. The adapter
    counts as inactive on skipped calls. A second run of another step count restarts the schedule."""
    adapter = demo["adapters"]["sd-style" if name == "sd15" else "sd-object"]
    built = build(demo, name, "sd-style" if name == "sd15" else "sd-object", taylorseer(3, 2))
    seen: list[torch.Tensor] = []
    built.pipe.unet.register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    calls = 6
    steps = 5 if name == "sd15" else 6  # PNDM: a UNet call more than steps; Euler: one per step
    reported = []
    with torch.no_grad():
        result = built.denoise([condition(built, name, adapter)], [0], steps, on_step=reported.append)
    schedule = acceleration.taylorseer_schedule(calls, 3, 2)
    assert schedule == [True, True, False, True, False, False]
    assert result.adapter_active == [s.adapter_active for s in reported] == schedule
    last, before = None, None
    for step, (computed, output) in enumerate(zip(schedule, seen, strict=True)):
        if computed:
            before, last = last, (step, output)
            continue
        (s1, f1), (s0, f0) = last, before
        slope = ((f1 - f0.float().to(f1.dtype)) / (s1 - s0)).float()
        value = f1.float().to(f1.dtype)
        expected = torch.zeros_like(f1) + value * 1.0 + slope.to(f1.dtype) * float(step - s1)
        assert torch.equal(output, expected), step
    assert not torch.equal(seen[2], seen[1])  # extrapolated, not repeated
    assert built.accelerated.tally == {"calls": calls, "computed": sum(schedule)}
    with torch.no_grad():
        built.denoise([condition(built, name, adapter)], [0], 2)
    extra = 3 if name == "sd15" else 2  # both computed, the first two calls of a run
    assert built.accelerated.tally == {"calls": calls + extra, "computed": sum(schedule) + 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "adapter", "graphs"),
    [
        # width x tokens of the tiny UNet at 64 px: 32 x 64, 32 x 16, 64 x 4 (down and up), 64 x 1 (mid),
        # and 64 x 4 again with InstantStyle's scale 1 (up_blocks.1)
        ("sd15", "sd-style", 5),
        ("sdxl", "sd-object", 2),  # 64 x 16, 64 x 4 (down, mid and up); scale 1 everywhere
    ],
)
def test_regional_compile_traces_each_block_class_once_and_keeps_the_arithmetic(demo, name, adapter, graphs):
    """Dynamo over the UNet's transformer blocks (backend eager: inductor's kernels are the GPU's
    business, and they change float rounding there; the benchmark's max_pixel_diff measures that).
    Same latents bit for bit, with TaylorSeer on top too; one graph per block width x token count x
    IP-Adapter scale (SD1.5's InstantStyle scale is 1 on one up block's layers, 0 elsewhere): no
    graph per block, however many blocks share a class."""
    from torch._dynamo.utils import counters

    cond = condition(build(demo, name, adapter, None), name, demo["adapters"][adapter])
    for cache in ({}, taylorseer(2, 1)):
        expected = latents(build(demo, name, adapter, switches(**cache) if cache else None), cond, 3)
        torch._dynamo.reset()
        counters.clear()
        compiled = build(demo, name, adapter, {**switches(**cache), "compile": "regional"}, backend="eager")
        assert torch.equal(latents(compiled, cond, 3), expected)
        assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
@pytest.mark.parametrize(("name", "adapter"), [("sd15", "sd-style"), ("sdxl", "sd-object")])
def test_full_compile_is_one_graph_of_the_whole_unet_and_keeps_the_arithmetic(demo, name, adapter):
    """``compile: full``: the UNet's forward one graph (fullgraph, so a graph break fails here
    rather than on a GPU), same latents bit for bit (backend eager, no CUDA graph on a CPU), with
    TaylorSeer on top too; each output a copy the next call cannot overwrite."""
    from torch._dynamo.utils import counters

    cond = condition(build(demo, name, adapter, None), name, demo["adapters"][adapter])
    for cache in ({}, taylorseer(2, 1)):
        expected = latents(build(demo, name, adapter, switches(**cache) if cache else None), cond, 3)
        torch._dynamo.reset()
        counters.clear()
        full = {**switches(**cache), "compile": "full"}
        compiled = build(demo, name, adapter, full, backend="eager", mode=None)
        assert torch.equal(latents(compiled, cond, 3), expected)
        assert counters["stats"]["unique_graphs"] == 1
    sample = torch.zeros(2)
    copied = acceleration.copied_out(lambda: (sample,))()[0]
    assert torch.equal(copied, sample) and copied.data_ptr() != sample.data_ptr()


def test_full_compile_is_refused_on_flux_in_one_line(raw_demo):
    raw_demo["accelerations"] = {"whole": {"compile": "full"}}
    raw_demo["cells"][0]["accelerations"] = ["whole"]
    with pytest.raises(
        ConfigError, match=r"^config accelerations.whole.compile: flux backbones do not take full; "
    ):
        Grid(study_of(validate(raw_demo)))


def test_fp8_quantises_the_image_token_linears_and_keeps_the_prompt_and_adapter_tokens(demo):
    unet = build(demo, "sd15", "sd-style", None).pipe.unet
    linears = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]
    chosen = {n for n in linears if acceleration.quantized(n)}
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    image_tokens = ("attn1.to_q", "attn1.to_k", "attn2.to_q", "attn2.to_out.0", "ff.net.2")
    assert {f"{block}.{layer}" for layer in image_tokens} <= chosen
    kept = {f"{block}.attn2.to_k", f"{block}.attn2.to_v", f"{block}.attn2.processor.to_k_ip.0"}
    assert kept <= set(linears) and not kept & chosen
    assert not any(n.startswith(("time_embedding", "encoder_hid_proj")) for n in chosen)
    with pytest.raises(ConfigError, match="fp8: dynamic needs a CUDA GPU of compute capability >= 8.9"):
        acceleration.Accelerated(build(demo, "sd15", "sd-style", None).pipe, switches(fp8="dynamic"), CPU)


def sd_sweep(tmp_path, **accelerations):
    """A one-image SD1.5 style sweep of tiny weights on the CPU: eager and each of `accelerations`."""
    return study_of(validate(sd_sweep_config(tmp_path, **accelerations)))


def sd_sweep_config(tmp_path, **accelerations) -> dict:
    """`sd_sweep`'s config, as written."""
    return {
        "sweep": "sd-acceleration",
        "weights": "tiny",
        "device": "cpu",
        "dtype": "float32",
        **{key: str(tmp_path / key) for key in ("results_dir", "models_dir", "reports_dir")},
        "references": [{"id": "cat", "image": "builtin:chelsea", "role": "style"}],
        "prompts": [{"id": "p", "text": "a cup on a table, watercolor"}],
        "seeds": [3],
        "backbones": {"sd15": {"family": "sd15", "model": "sd15", "steps": [2, 4], "resolution": 64}},
        "adapters": {"style": {"kind": "ip_adapter", "role": "style", "scale": "style"}},
        "accelerations": accelerations,
        "cells": [{"backbones": ["sd15"], "adapters": ["style"], "accelerations": ["eager", *accelerations]}],
    }


def test_accelerated_sd_jobs_write_cells_paired_with_their_eager_twins(tmp_path):
    """Through the generation job: TaylorSeer computing every call writes eager's images pixel for
    pixel; interval 2 writes the same items with the adapter run on its schedule's calls only."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from fewstep.core.paths import Paths
    from fewstep.jobs import generate, precompute
    from fewstep.jobs.prepare import prepare_model

    config = sd_sweep(
        tmp_path,
        every={"cache": "taylorseer", "cache_interval": 1, "cache_warmup": 1},
        taylor={"cache": "taylorseer", "cache_interval": 2, "cache_warmup": 1},
    )
    grid, paths = Grid(config), Paths(config)
    for name in grid.generation_models(grid.cells[0]):
        prepare_model(config, name)
    precompute.embed_prompts(config)
    precompute.embed_references(config)
    for job in grid.jobs:
        generate.run_job(config, job, progress=False)

    def pixels(cell_id: str) -> np.ndarray:
        (item,) = grid.items_of(grid.cell(cell_id))
        return np.asarray(Image.open(paths.image(cell_id, item.id)))

    for steps, calls in ((2, 3), (4, 5)):  # PNDM: one UNet call more than steps
        eager = pixels(f"sd15/style/{steps}")
        assert np.array_equal(pixels(f"sd15/style+every/{steps}"), eager)
        assert not np.array_equal(pixels(f"sd15/style+taylor/{steps}"), eager)
        adapter = pd.read_parquet(paths.manifest(f"sd15/style+taylor/{steps}"))["adapter_steps"]
        assert list(adapter) == [sum(acceleration.taylorseer_schedule(calls, 2, 1))] == [(calls + 1) // 2]


def run_python(script: str, *args: str, **env: str) -> list[str]:
    """The last line `script` prints, run by this interpreter with the workflow on its path and
    `env` set (no $TORCHINDUCTOR_CACHE_DIR unless given)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    base = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "workflow"), base.get("PYTHONPATH")]))
    command = [sys.executable, "-c", script, *args]
    done = subprocess.run(command, env=base | env, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[-1].split("\t")


@pytest.mark.slow  # four interpreters that import diffusers (~20 s on 2 cores)
def test_a_compiling_job_keeps_inductors_caches_in_the_sweeps_cache_folder(tmp_path):
    """`fewstep generate` of a job that compiles points inductor's caches at the sweep's cache folder
    before its pre-card imports load torch._dynamo (which would set torch's /tmp default), here
    on a simulated GPU host (NVML counts a card), so the run's jobs on any node share the kernels;
    an eager job, and a user's own $TORCHINDUCTOR_CACHE_DIR, are left alone."""
    import json
    import os

    from fewstep.core.paths import Paths

    raw = sd_sweep_config(tmp_path, full={"compile": "full"}, regional={"compile": "regional"})
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({**raw, "device": "auto"}))
    script = (
        "import os, sys, torch\n"
        "torch.cuda._device_count_nvml = lambda: 1  # the libraries load before the card is taken\n"
        "from fewstep import cli\n"
        "args = cli.parser().parse_args(['generate', '--config', sys.argv[1], '--job', sys.argv[2]])\n"
        "cli._gpu_study(args, setup=cli._share_compiled_kernels)\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "print(str('torch._dynamo' in sys.modules), cache_dir(), sep='\\t')\n"
    )
    env = {"FEWSTEP_GPUS": "0"}  # no card to lock here
    shared = os.path.abspath(Paths(study_of(validate(raw))).cache_dir / "torchinductor")
    full, regional = (
        run_python(script, str(config), job, **env) for job in ("sd15/style+full", "sd15/style+regional")
    )
    assert full == regional == ["True", shared]
    assert run_python(script, str(config), "sd15/style", **env)[1] != shared
    mine = str(tmp_path / "mine")
    assert run_python(script, str(config), "sd15/style+full", TORCHINDUCTOR_CACHE_DIR=mine, **env) == [
        "True",
        mine,
    ]


@pytest.mark.slow
def test_a_second_process_reuses_the_kernels_the_first_compiled(tmp_path):
    """Two processes compile the same function with inductor (CPU, C++): the second loads the first's
    FX graph and AOTAutograd entries from the shared folder instead of compiling (~35 s on 2 cores)."""
    script = (
        "import sys\n"
        "from fewstep.core import jobenv\n"
        "jobenv.share_compiled_kernels(sys.argv[1])  # before torch._dynamo is imported\n"
        "import torch\n"
        "from torch._dynamo.utils import counters\n"
        "torch.compile(lambda x: (x.sin() * 2).relu(), dynamic=False)(torch.ones(8))\n"
        "print(counters['inductor']['fxgraph_cache_hit'], counters['inductor']['fxgraph_cache_miss'],\n"
        "      counters['aot_autograd']['autograd_cache_hit'], sep='\\t')\n"
    )
    runs = [run_python(script, str(tmp_path)) for _ in range(2)]
    assert runs == [["0", "1", "0"], ["1", "0", "1"]]
    assert (tmp_path / "torchinductor" / "fxgraph").is_dir()
