"""Fault injection for workflow tests: on PYTHONPATH, every Python process loads this.

FEWSTEP_FAULT=oom_above_batch_1 makes fewstep's sampler raise torch.OutOfMemoryError
for batches of more than one image, as a GPU that is too small would: the test then
watches Snakemake's retry halve the batch. FEWSTEP_FAULT=disk_full_under:<folder> makes
every file opened for writing below <folder> fail with ENOSPC, as a full disk does.
Nothing happens without the variable.
"""

import importlib.abc
import importlib.util
import os
import sys


class _WrapSampler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "fewstep.families.flux.pipeline":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            denoise = module.denoise

            def failing(parts, cond, settings, *args, **kwargs):
                if len(settings.seeds) > 1:
                    import torch

                    raise torch.OutOfMemoryError("CUDA out of memory (injected by tests/faults)")
                return denoise(parts, cond, settings, *args, **kwargs)

            module.denoise = failing

        loader.exec_module = exec_module
        return spec


def _fill_disk_under(folder: str) -> None:
    import builtins
    import errno
    import io

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+"):
            path = os.path.abspath(os.fsdecode(file))
            if path.startswith(folder):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = open_


FAULT = os.environ.get("FEWSTEP_FAULT", "")
if FAULT == "oom_above_batch_1":
    sys.meta_path.insert(0, _WrapSampler())
elif FAULT.startswith("disk_full_under:"):
    _fill_disk_under(os.path.abspath(FAULT.removeprefix("disk_full_under:")))
