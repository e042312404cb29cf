"""Fault injection for workflow tests: on PYTHONPATH, every Python process loads this.

FEWSTEP_FAULT=oom_above_batch_1 makes fewstep's sampler raise torch.OutOfMemoryError
for batches of more than one image, as a GPU that is too small would: the test then
watches Snakemake's retry halve the batch. Nothing happens without the variable.
"""

import importlib.abc
import importlib.util
import os
import sys


class _WrapSampler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "fewstep.sampling":
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


if os.environ.get("FEWSTEP_FAULT") == "oom_above_batch_1":
    sys.meta_path.insert(0, _WrapSampler())
