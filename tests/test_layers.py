"""Layers point down: each subpackage imports only the layers below it, read from the source's import statements.

    formats/            imports nothing else of the package
    checkpoints/        model files, builder, chat templates, formats
    training/           + checkpoints/ (never evaluation/, data_generation/, serving/)
    modeling, processing, configuration, image processing: also remote code, so only each other
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transformers_llava"
SUBPACKAGES = ("formats", "checkpoints", "training", "evaluation", "data_generation", "serving")
FORBIDDEN = {
    "formats": set(SUBPACKAGES) - {"formats"} | {"modeling_llava", "processing_llava", "chat", "builder"},
    "checkpoints": {"training", "evaluation", "data_generation", "serving"},
    "training": {"evaluation", "data_generation", "serving"},
}
REMOTE_CODE = ("configuration_llava.py", "modeling_llava.py", "processing_llava.py", "image_processing_llava.py")


def package_imports(path: Path) -> set[str]:
    """The top-level modules of transformers_llava that a file imports (relative or absolute, any depth)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a module at the package root
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then read the first name below it
                if node.level - 1 < depth:
                    continue  # within the file's own subpackage
                parts = (node.module or "").split(".") if node.module else [alias.name for alias in node.names]
                found.update(parts[:1] if node.module else parts)
            elif (node.module or "").startswith("transformers_llava."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("transformers_llava."))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    upward = {str(path.relative_to(PACKAGE)): sorted(package_imports(path) & FORBIDDEN[layer])
              for path in sorted((PACKAGE / layer).rglob("*.py"))}
    assert {file: names for file, names in upward.items() if names} == {}


def test_remote_code_files_import_only_each_other_and_transformers():
    for name in REMOTE_CODE:
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
        assert relative <= {name.removesuffix(".py") for name in REMOTE_CODE}, (name, relative)
