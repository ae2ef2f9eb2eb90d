"""Modules the CLI loads only when a command uses them: ``bcdr backup`` does not pay for the
scheduler, the report renderer or the Azure SDKs, nor ``bcdr --help`` for any of them.
(importlib's LazyLoader: the module object exists at once; its code runs on first use.)"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
