"""Type-check generated dashboard JSON with ``tsc --strict`` against @grafana/schema.

No Grafana server runs here, so the dashboards are checked offline: each JSON file is embedded as
a ``DashboardJson`` literal (see ``dashboards/ts/grafana-json.ts``) in a throwaway TypeScript
module, and the TypeScript compiler pinned in ``dashboards/package-lock.json`` checks it.
Needs ``npm ci --prefix dashboards`` first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["NPM_INSTALL", "TypecheckError", "main", "typecheck"]

_HERE = Path(__file__).resolve().parent
_TYPES = _HERE / "ts" / "grafana-json.ts"
_TSCONFIG = _HERE / "tsconfig.json"
_TSC = _HERE / "node_modules" / "typescript" / "bin" / "tsc"
_SCHEMA = _HERE / "node_modules" / "@grafana" / "schema" / "package.json"

#: The command that installs the pinned TypeScript and @grafana/schema (run at the repo root).
NPM_INSTALL = "npm ci --prefix dashboards"


class TypecheckError(RuntimeError):
    """``tsc`` rejected a dashboard, or could not run; the message holds its output."""


def _default_files() -> list[Path]:
    return sorted((_HERE / "json").glob("*.json"))


def typecheck(json_files: Sequence[str | Path] | None = None, *, timeout: float = 120.0) -> None:
    """Type-check dashboard JSON files with ``tsc --strict``.

    Args:
        json_files: dashboard JSON files; every file in ``dashboards/json`` when ``None``.
        timeout: seconds ``tsc`` may run.

    Raises:
        ValueError: no files, or a file is not a JSON object.
        FileNotFoundError: a file is missing, or node/the npm packages are not installed.
        TypecheckError: ``tsc`` reported errors.
    """
    files = [Path(f) for f in (_default_files() if json_files is None else json_files)]
    if not files:
        raise ValueError("json_files must name at least one dashboard JSON file, got none")
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node is not on PATH; install Node.js (>= 18) to type-check")
    if not _TSC.is_file() or not _SCHEMA.is_file():
        raise FileNotFoundError(
            f"TypeScript or @grafana/schema missing under {_HERE / 'node_modules'}; "
            f"run `{NPM_INSTALL}` at the repository root"
        )
    with tempfile.TemporaryDirectory(prefix="texwatch-tsc-") as tmp:
        checks = []
        for i, path in enumerate(files):
            text = path.read_text(encoding="utf-8")
            if not isinstance(json.loads(text), dict):
                raise ValueError(f"{path} must hold a dashboard JSON object")
            check = Path(tmp) / f"dashboard_{i}.ts"
            check.write_text(
                f"// Type-check of {path}\n"
                f'import type {{ DashboardJson }} from "{_TYPES.with_suffix("")}";\n'
                f"export const dashboard: DashboardJson = {text};\n",
                encoding="utf-8",
            )
            checks.append(check)
        tsconfig = Path(tmp) / "tsconfig.json"
        tsconfig.write_text(
            json.dumps({"extends": str(_TSCONFIG), "files": [str(c) for c in checks]}),
            encoding="utf-8",
        )
        proc = subprocess.run(
            [node, str(_TSC), "--strict", "--pretty", "false", "-p", str(tsconfig)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            names = ", ".join(f"dashboard_{i}.ts = {p}" for i, p in enumerate(files))
            raise TypecheckError(
                f"tsc --strict rejected the dashboard JSON ({names}):\n{proc.stdout}{proc.stderr}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dashboards.typecheck [FILE ...]``: returns 0 when every file type-checks."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        typecheck(args or None)
    except (TypecheckError, FileNotFoundError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
