"""Build hook: compile the receive loop's C helper (aggregator/_hotpath.c) into the wheel.

Without a C compiler the build still succeeds, with a warning: aggregator/hotpath.py then
uses its Python versions of the same functions, and the receive rate is lower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_MODULE = "aggregator._hotpath"
_SOURCE = "aggregator/_hotpath.c"


def compile_extension(root: Path, out_dir: Path) -> Path:
    """Compile the helper into out_dir/aggregator with the compiler and flags of this Python."""
    # Imported here: only this hook needs setuptools, and only while building.
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    extension = Extension(_MODULE, [str(root / _SOURCE)], extra_compile_args=["-O2"])
    command = build_ext(Distribution({"ext_modules": [extension], "script_name": "hatch_build"}))
    command.build_lib = str(out_dir)
    command.build_temp = str(root / "build" / "hotpath-objects")
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath(_MODULE))


class HotpathBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        # An editable install imports the source tree: the module goes next to its source.
        out_dir = root if version == "editable" else root / "build" / "hotpath"
        try:
            built = compile_extension(root, out_dir)
        except Exception as error:
            self.app.display_warning(
                f"aggregator: C helper not compiled ({error}); the Python receive path "
                "will be used (a lower receive rate, the same results)"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(built)] = f"aggregator/{built.name}"
