"""One package under two names: the wheel installs the recipes as ``zoo_recipes`` (a name no other project uses),
while the configs, the checkpoints' task table and the code name them ``recipes.*`` (the folder's name in the
repository). :func:`alias` makes ``recipes`` and ``recipes.<sub>`` the very modules of ``zoo_recipes`` (same
objects, so classes compare equal), unless another project's top-level ``recipes`` is importable: that one wins
for the top-level name."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys


class _AliasLoader(importlib.abc.Loader):
    """Loads ``recipes.<sub>`` as the module object of ``zoo_recipes.<sub>``: registered under the real name before
    it runs, so imports inside it (under either name) find it, as for any module being imported."""

    def __init__(self, module, real_spec) -> None:  # noqa: ANN001
        self.module, self.real_spec = module, real_spec

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib protocol
        return self.module

    def exec_module(self, module) -> None:  # noqa: ANN001
        module.__spec__ = self.real_spec  # the import system set the alias's spec; the real one stays
        if getattr(self.real_spec, "_zoo_alias_loaded", False):
            return  # already imported under its real name
        try:
            self.real_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(self.real_spec.name, None)
            raise


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, real: str, alias: str) -> None:
        self.real, self.alias = real, alias

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        if fullname == self.alias:
            if importlib.machinery.PathFinder.find_spec(fullname) is not None:
                return None  # a real top-level `recipes` on sys.path (another project's, or a checkout) wins
        elif not fullname.startswith(self.alias + ".") or sys.modules.get(self.alias) is not sys.modules.get(
            self.real
        ):
            return None
        real_name = self.real + fullname[len(self.alias):]
        module = sys.modules.get(real_name)
        if module is not None:
            real_spec = module.__spec__
            real_spec._zoo_alias_loaded = True
        else:
            real_spec = importlib.util.find_spec(real_name)
            if real_spec is None:
                return None
            module = importlib.util.module_from_spec(real_spec)
            sys.modules[real_name] = module
        is_package = real_spec.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(module, real_spec), is_package=is_package)


def alias(real: str, name: str = "recipes") -> None:
    """Resolve imports of ``name`` and ``name.<sub>`` to the modules of the package ``real`` (idempotent)."""
    if real == name or any(isinstance(f, _AliasFinder) and f.real == real for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AliasFinder(real, name))
