"""The package's import graph: layers, no cycles, and one reader of config files.

Every module of `lasad_jax` belongs to a layer (its subpackage, or itself for the
top-level modules); a module may import its own layer and the layers below it, never one
above. The order, lowest first:

    validation  files  ops  parallel  models  tokenizers  data  training  sampling  evaluation
    convert  config  jobs  main

(`validation` is what every config block shares; `config` reads config files into the
typed run; `jobs` composes the library into the modes; `main` is the command line.)
Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lasad_jax"
LAYERS = ("validation", "files", "ops", "parallel", "models", "tokenizers", "data", "training",
          "sampling", "evaluation", "convert", "config", "jobs", "main")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
    """The lasad_jax modules `path` imports (a name imported from a package counts as
    that package's submodule when one exists)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lasad_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lasad_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if MODULES.get(sub) else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lasad_jax"


def test_every_module_has_a_layer():
    assert {layer(m) for m in MODULES} - {"lasad_jax"} == set(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
              if layer(m) in LAYERS and layer(d) in LAYERS
              and LAYERS.index(layer(d)) > LAYERS.index(layer(m))]
    assert upward == []


def test_no_import_cycles_between_modules():
    """Tarjan's strongly connected components over the module graph."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    # A package's __init__ re-exporting its modules is not a cycle of design.
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".")
                                           for m in c)]
    assert cycles == []


def imported_modules(path: pathlib.Path) -> list[str]:
    """Every module named by an import statement of `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append(node.module or "")
    return found


def test_only_the_entry_reads_config_files():
    """Below `lasad_jax.config` every function takes typed blocks, never a ConfigDict."""
    readers = {name for name, path in MODULES.items()
               if any(m.startswith("ml_collections") for m in imported_modules(path))}
    assert sorted(readers) == ["lasad_jax.config"]  # the file and its --config flags


def test_no_test_module_imports_another():
    """Shared test code lives in helper modules (tests/helpers.py, tests/*/helpers.py)."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests"):
                if node.module.split(".")[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert offenders == []


def test_tensorflow_comes_in_through_one_door():
    """TensorFlow (directly, or through clu or tfds) is imported in three places only, each
    after `files.tensorflow()` has hidden the GPUs from it: a GPU build of TensorFlow
    would otherwise take memory that belongs to JAX."""
    heavy = ("tensorflow", "clu", "tensorflow_datasets")
    found = sorted((name, m) for name, path in MODULES.items()
                   for m in imported_modules(path) if m.split(".")[0] in heavy)
    assert found == [("lasad_jax.data.images", "tensorflow_datasets"),
                     ("lasad_jax.files", "tensorflow"),
                     ("lasad_jax.training.writers", "clu")]
    for module, heavy_import in (("lasad_jax.data.images", "import tensorflow_datasets"),
                                 ("lasad_jax.training.writers", "from clu import")):
        text = MODULES[module].read_text()
        assert text.index("tensorflow()") < text.index(heavy_import), module


def test_only_training_loads_tensorflow():
    """Sampling, evaluating and the command line up to its job load neither TensorFlow nor
    clu (their import takes seconds); the training loop's writers load both."""
    import subprocess
    import sys

    code = ("import sys; import lasad_jax.main, lasad_jax.jobs.sample, lasad_jax.jobs.evaluate, "
            "lasad_jax.jobs.train, lasad_jax.jobs.train_tokenizer; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'clu'})); "
            "import lasad_jax.training.writers; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'clu'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["[]", "['clu', 'tensorflow']"]
