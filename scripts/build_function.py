"""Build a Lambda function's package: what it imports (and the model, if it predicts), nothing else.

`sam build` runs this through the Makefile's `build-<Function>` targets (the template's
`BuildMethod: makefile`) with ARTIFACTS_DIR set. It installs the package's requirements as Linux wheels
for the function's architecture, copies handler/ (and model_artifacts/), and drops what the function
never loads: the dependencies' own test suites, C headers and sources, type stubs and console scripts.

Five packages, each with what its function imports:
- `predict` (PredictFunction): requirements.txt and the model (its manifest and the artifact it names); a
  posterior file needs numpy alone, so GPy and scipy (requirements-gpy.txt) are added only when the manifest is a
  pickle's;
- `worker` (JobWorkerFunction): the same, pyarrow for the results' parts it writes (pruned to what it loads) and
  scipy for designs of experiments (requirements-worker.txt);
- `finisher` (JobFinisherFunction): requirements-finisher.txt (no pyarrow: it has S3 stitch the parts), no model;
- `training` (TrainingFunction): requirements-training.txt (GPy, scipy, paramz: the fit), handler/, no model;
- `explorer` (ExplorerFunction): requirements-explorer.txt (Powertools alone), the model explorer's page and assets
  (handler/explorer/) and only the modules of handler/ that handler/explorer_app.py imports: no model.

    python scripts/build_function.py ARTIFACTS_DIR [--arch arm64|x86_64]
        [--package predict|worker|finisher|explorer|training]
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.13"  # the template's Runtime
# Lambda's python3.13 runtime is Amazon Linux 2023 (glibc 2.34): these manylinux tags run there.
PLATFORMS = {
    "arm64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
    "x86_64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
}
# Each package's requirements, and whether it carries the model (and so, for a pickle, the GPy route).
PACKAGES = {
    "predict": ("requirements.txt", True),
    "worker": ("requirements-worker.txt", True),
    "finisher": ("requirements-finisher.txt", False),
    "explorer": ("requirements-explorer.txt", False),
    "training": ("requirements-training.txt", False),
}
# The model explorer's page, script, style and vendored chart library (with its licence): files the explorer's
# function reads and serves (handler/api/explorer.py), not Python, so copied on their own; only it serves them.
EXPLORER = ROOT / "handler" / "explorer"
EXPLORER_ENTRY = ROOT / "handler" / "explorer_app.py"
MODEL_MANIFEST = ROOT / "model_artifacts" / "pretrained-model.manifest.json"
# Data that modules of handler/ read from beside them: the Sobol' direction numbers of handler/jobs/sequences.py.
HANDLER_DATA = [ROOT / "handler" / "jobs" / "sobol_directions.npz"]
GPY_REQUIREMENTS = "requirements-gpy.txt"
# Never loaded at run time. GPy imports its own `testing` and `examples` packages, so those stay.
PRUNED_DIRECTORIES = {"tests", "__pycache__", "include"}
PRUNED_SUFFIXES = {".pyi", ".pxd", ".pyx", ".c", ".cpp", ".h", ".hpp", ".f", ".f90", ".pyc"}
# The functions call S3 (a model from MODEL_S3_URI, jobs' files), DynamoDB and SQS (jobs): botocore's
# models of its other ~400 services are ~20 MB they never read.
BOTOCORE_SERVICES = {"s3", "dynamodb", "sqs"}
# pyarrow's parts the worker never loads (it writes CSV and Parquet to memory): Flight, the cloud and HDFS file
# systems, ORC, Feather, JSON, Parquet encryption and pyarrow's own C++ tests, ~55 MB of its 141 MB on arm64. What
# pyarrow.lib links (dataset, acero, substrait, compute, parquet) stays: the import fails without them.
PYARROW_UNUSED = (
    "_flight.*", "libarrow_flight.*", "libarrow_python_flight*", "_s3fs.*", "libarrow_s3.*", "_gcsfs.*",
    "_azurefs.*", "_hdfs.*", "_orc.*", "_dataset_orc.*", "_feather.*", "_json.*", "_pyarrow_cpp_tests.*",
    "_parquet_encryption.*", "_dataset_parquet_encryption.*", "libarrow_python_parquet_encryption*",
)  # fmt: skip


def install_dependencies(target: Path, arch: str, requirements: list[str]) -> None:
    platforms = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
    files = [arg for name in requirements for arg in ("-r", str(ROOT / name))]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "--target", str(target), "--implementation", "cp", "--python-version", PYTHON_VERSION,
        "--only-binary=:all:", *platforms, *files,
    ]  # fmt: skip
    subprocess.run(command, check=True)


def model_files(manifest_path: Path = MODEL_MANIFEST) -> tuple[list[Path], bool]:
    """The packaged model's files (its manifest and the artifact it names), and whether it needs the GPy route."""
    document = json.loads(manifest_path.read_text())
    artifact = manifest_path.with_name(Path(str(document["artifact"])).name)
    needs_gpy = document.get("format", "pickle") != "npz"  # schema 2 manifests are pickles'
    return [manifest_path, artifact], needs_gpy


def project_modules(entry: Path) -> list[Path]:
    """`entry` and the modules of handler/ it imports, directly or through each other (with their packages'
    __init__.py): read from their import statements, so that a module the explorer starts importing comes along."""
    found: set[Path] = set()
    pending = [entry]
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name.split(".")[0] != "handler":
                    continue
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # each package on the way, and the module itself
                    stem = ROOT.joinpath(*parts[:depth])
                    for candidate in (stem / "__init__.py", stem.with_suffix(".py")):
                        if candidate.is_file():
                            pending.append(candidate)
    return sorted(found)


def handler_files(package: str) -> list[Path]:
    """The files of handler/ a package carries: the explorer's page and the modules it imports, or every module
    with the data they read."""
    if package == "explorer":
        return project_modules(EXPLORER_ENTRY) + sorted(path for path in EXPLORER.rglob("*") if path.is_file())
    return sorted((ROOT / "handler").rglob("*.py")) + HANDLER_DATA


def copy_project(target: Path, paths: list[Path]) -> None:
    for path in paths:
        destination = target / path.relative_to(ROOT)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def prune(target: Path) -> int:
    """Delete what the function never loads; returns the bytes freed."""
    freed = 0
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts (f2py, numpy-config)
    botocore_data = target / "botocore" / "data"
    for service in sorted(botocore_data.iterdir()) if botocore_data.is_dir() else []:
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            freed += sum(f.stat().st_size for f in service.rglob("*") if f.is_file())
            shutil.rmtree(service)
    freed += prune_pyarrow(target / "pyarrow")
    for path in sorted(target.rglob("*"), reverse=True):  # children before their folders
        if path.is_dir() and path.name in PRUNED_DIRECTORIES and path.parent != target:
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in PRUNED_SUFFIXES and path.exists():
            freed += path.stat().st_size
            path.unlink()
    return freed


def prune_pyarrow(folder: Path) -> int:
    """PYARROW_UNUSED, and the copies of each shared library that the wheel's symlinks became (libX.so and
    libX.so.N.M.K beside libX.so.N, the name the loader asks for); returns the bytes freed."""
    if not folder.is_dir():
        return 0
    doomed = {path for pattern in PYARROW_UNUSED for path in folder.glob(pattern) if path.is_file()}
    for library in folder.glob("lib*.so.*"):
        stem, _, version = library.name.partition(".so.")
        if version.isdigit():  # the loader's name: its copies go
            for copy in (folder / f"{stem}.so", *folder.glob(f"{stem}.so.{version}.*")):
                if copy.is_file() and copy.read_bytes() == library.read_bytes():
                    doomed.add(copy)
    freed = sum(path.stat().st_size for path in doomed)
    for path in doomed:
        path.unlink()
    return freed


def package_size(target: Path) -> int:
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="the package folder (sam build's ARTIFACTS_DIR)")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64", help="the function's architecture")
    parser.add_argument("--package", choices=sorted(PACKAGES), default="predict", help="which function's package")
    parser.add_argument("--with-gpy", action="store_true", help="add the GPy route whatever the packaged model is")
    args = parser.parse_args(argv)
    requirements, with_model = PACKAGES[args.package]
    paths = handler_files(args.package)
    needs_gpy = args.with_gpy
    if with_model:
        files, for_model = model_files()
        needs_gpy = needs_gpy or for_model
        paths += files
    args.target.mkdir(parents=True, exist_ok=True)
    install_dependencies(args.target, args.arch, [requirements, *([GPY_REQUIREMENTS] if needs_gpy else [])])
    copy_project(args.target, paths)
    freed = prune(args.target)
    route = " with the GPy route (the packaged model is a pickle)" if needs_gpy else ""
    print(f"built {args.target}{route}: {package_size(args.target):,} bytes unzipped ({freed:,} pruned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
