"""Program files at package time (torch.export programs, AOTInductor packages): which format a `.pt2` is,
and for a package its device, CUDA architecture (against the endpoint's instance type), precision and
batch bounds, checked against the catalogue by loading and running it when this machine can."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from kit import KitError
from model_code import aoti
from model_code.catalogue import INSTANCE_GPUS, MODELS, arch_runs_on, instance_gpu, instances_for
from model_code.loaders import load_program
from model_code.manifest import AotiPackage
from model_code.settings import DEFAULT_MAX_BATCH_SIZE
from stacks.names import DEFAULT_INSTANCE_TYPE

log = logging.getLogger(__name__)


def describe_program(name: str, path: Path, instance_type: str = DEFAULT_INSTANCE_TYPE) -> dict[str, Any]:
    """The manifest fields (format, dtype, package) of program file `path` for model `name`; refuses a
    file that does not fit the catalogue or the instance type."""
    fmt = aoti.detect_format(path)
    if fmt == aoti.TORCH_EXPORT:
        load_program(path, torch.device("cpu"))  # refuse an unloadable archive now, not at deploy time
        return {"format": fmt, "dtype": "float32"}
    family = MODELS[name].family
    facts = aoti.read_facts(path)
    check_instance(path, facts, instance_type)
    declared = aoti.check_declared(facts.declared, family, name) if facts.declared else None
    runnable = facts.device == "cpu" or torch.cuda.is_available()
    if runnable:
        device = aoti.check_device(path, facts, torch.device("cuda" if facts.device == "cuda" else "cpu"))
        probed = probe_isolated(path, family, device, name)
        precision, batch_min, batch_max = probed.precision, probed.batch_min, probed.batch_max
        if declared and declared[0] != precision:
            raise KitError(f"{path}: model_metadata.json declares {declared[0]} tiles, the package runs in {precision}")
    elif declared:
        precision, batch_min, batch_max = declared
        log.warning("%s: compiled for CUDA %s; no GPU here, so it runs first on the endpoint", path, facts.cuda_arch)
    else:
        raise KitError(
            f"{path} is compiled for CUDA ({facts.cuda_arch}) and has no model_metadata.json: its shapes can only "
            "be checked by running it, so package it on a machine with a GPU of that architecture"
        )
    package = AotiPackage(
        device=facts.device,  # type: ignore[arg-type]
        cuda_arch=facts.cuda_arch,
        cpu_isa=facts.cpu_isa,
        batch_min=batch_min,
        batch_max=batch_max,
        shapes_from="probe" if runnable else "model_metadata.json",
        probed_with_torch=torch.__version__ if runnable else None,
    )
    return {"format": fmt, "dtype": precision, "package": package}


def probe_isolated(path: Path, family: str, device: torch.device, name: str) -> aoti.Probe:
    """Load and probe the package in a child process, so that a package which crashes the loader (seen: a
    segmentation fault in aoti_load_package for a CUDA package on an H200 under torch 2.11) is refused with
    the reason instead of taking `kit package` down with it."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(_load_and_probe, path, family, str(device), name).result()
        except BrokenProcessPool:
            raise KitError(
                f"{path}: loading this AOTInductor package crashed the process under torch {torch.__version__} "
                f"on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}; a package the "
                "serving torch cannot load would crash the endpoint the same way. Build the serving image with "
                "the torch release it was compiled with (TORCH_VERSION, container/torch-versions.txt)"
            ) from None


def _load_and_probe(path: Path, family: str, device: str, name: str) -> aoti.Probe:
    """The child's work: load with input checks on, run at 1 and at the default batch size. The runtime
    prints each refused probe shape to file descriptor 2 ("Error: input_handles[0]: ..."); those are the
    answers the probe reads from the exception, so the child's stderr is silenced."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    where = torch.device(device)
    return aoti.probe(aoti.load_package(path, where), family, where, DEFAULT_MAX_BATCH_SIZE, name)


def check_instance(path: Path, facts: aoti.PackageFacts, instance_type: str) -> None:
    """A CUDA package must run on the instance type's GPU; a CPU package on a GPU instance only warns."""
    gpu = instance_gpu(instance_type)
    if facts.device == "cpu":
        if gpu:
            log.warning("%s is compiled for the CPU: on %s it runs on the CPU, not the %s", path, instance_type, gpu[0])
        return
    arch = facts.cuda_arch or "unknown"
    fits = ", ".join(f"{family} ({INSTANCE_GPUS[family][0]})" for family in instances_for(arch)) or "none known"
    if gpu is None:
        raise KitError(
            f"{path} needs a CUDA GPU ({arch}) and {instance_type} has none; instance types that fit: {fits}"
        )
    if facts.cuda_arch and not arch_runs_on(facts.cuda_arch, gpu[1]):
        raise KitError(
            f"{path} holds kernels for {facts.cuda_arch}, the {gpu[0]} of {instance_type} is {gpu[1]}: choose an "
            f"instance type that fits ({fits}; --instance-type and the endpoint's instanceType), or have the "
            f"package compiled for {gpu[1]}"
        )
