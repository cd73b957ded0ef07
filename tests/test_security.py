"""Static checks over the project's own source (flows/, tasks/, bench/): nothing that unpickles,
runs code from data or from a model repository, or starts a shell.

Each rule is an AST check, so `model.eval()` is not `eval(...)` and a comment is not code. A
finding names file, line, rule and the line's text. Every rule is shown to fire on a literal
snippet (test_each_rule_fires_on_its_pattern), so a rule that silently stopped matching fails here
rather than letting the scan of the real source pass vacuously.

What runs at execution time (result files, committed artifacts) is checked by
tests/flows/test_no_pickle_results.py on a completed pipeline run.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("flows", "tasks", "bench")
SETTINGS_FILES = ("pyproject.toml", "Makefile", "deployments")  # where a serializer could be configured

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve"}
PICKLE_SERIALIZER_NAMES = {"PickleSerializer", "CompressedPickleSerializer"}
PICKLE_SERIALIZER_STRING = re.compile(r"(?i)^(compressed/)?(cloud)?pickle$")
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}
UNSAFE_YAML_CALLS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
# from_pretrained on these loads model weights; tokenizers, configs and PEFT adapters are not matched
# (evaluate checks adapter folders itself: PEFT has no use_safetensors switch).
WEIGHT_LOADER = re.compile(r"^(AutoModel\w*|\w+For(CausalLM|SequenceClassification|MaskedLM|TokenClassification)|\w+Model)$")
NOT_WEIGHT_LOADERS = {"PeftModel", "SentenceTransformerModel"}

RULES = {
    "pickle-import": "imports a pickle-based serialization module",
    "pickle-writer": "writes a pickle-based file (torch.save, to_pickle)",
    "pickle-reader": "reads a pickle-based file (read_pickle, allow_pickle=True)",
    "torch-load": "torch.load without weights_only=True unpickles arbitrary objects",
    "trust-remote-code": "trust_remote_code=True literal: remote code is only for a pinned revision from the recipe",
    "result-serializer": "a Prefect result serializer other than \"json\"",
    "pickle-serializer": "a pickle serializer setting or class",
    "prefect-result": "a Prefect task/flow that may persist results without result_serializer=\"json\" "
                      "(set it, or persist_result=False)",
    "eval-exec": "eval()/exec() runs text as code",
    "yaml-load": "yaml loading that can construct arbitrary objects (use yaml.safe_load)",
    "shell": "a shell command line (shell=True, os.system, os.popen)",
    "unsafe-weights": "model weights loaded without use_safetensors=True, or saved with safe_serialization=False",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {RULES[self.rule]}\n    {self.text.strip()}"


def _dotted(node: ast.AST | None) -> str:
    """`torch.load` for Attribute(Name(torch), load); `?.eval` for `f(x).eval`; '' for the rest."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value) or '?'}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value) -> bool:
    """node is the literal `value` (True is not 1 here)."""
    return isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, lines: list[str]):
        self.path, self.lines = path, lines
        self.findings: list[Finding] = []
        self.prefect_names: dict[str, str] = {}  # local name -> "task" | "flow" (imported from prefect)
        self.prefect_sites = 0  # Prefect task/flow definitions examined (a scan that saw none proves nothing)

    def flag(self, node: ast.AST, rule: str) -> None:
        line = getattr(node, "lineno", 0)
        self.findings.append(Finding(self.path, line, rule, self.lines[line - 1] if line else ""))

    # imports ---------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in PICKLE_MODULES:
                self.flag(node, "pickle-import")
            if alias.name == "prefect":
                self.prefect_names.update({f"{alias.asname or 'prefect'}.task": "task",
                                           f"{alias.asname or 'prefect'}.flow": "flow"})
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in PICKLE_MODULES:
            self.flag(node, "pickle-import")
        for alias in node.names:
            if alias.name in PICKLE_SERIALIZER_NAMES:
                self.flag(node, "pickle-serializer")
            if module == "prefect" and alias.name in ("task", "flow"):
                self.prefect_names[alias.asname or alias.name] = alias.name
        self.generic_visit(node)

    # names and strings -------------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in PICKLE_SERIALIZER_NAMES:
            self.flag(node, "pickle-serializer")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in PICKLE_SERIALIZER_NAMES:
            self.flag(node, "pickle-serializer")
        if _dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML_LOADERS:
            self.flag(node, "yaml-load")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and PICKLE_SERIALIZER_STRING.match(node.value):
            self.flag(node, "pickle-serializer")  # "pickle" as a setting's value

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if _is_const(key, "trust_remote_code") and _is_const(value, True):
                self.flag(key, "trust-remote-code")
            if _is_const(key, "result_serializer") and not _is_const(value, "json"):
                self.flag(key, "result-serializer")
        self.generic_visit(node)

    # decorators --------------------------------------------------------------------------------
    def _check_prefect_decorators(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            if _dotted(decorator) in self.prefect_names:  # bare @task / @flow: default serializer
                self.prefect_sites += 1
                self.flag(decorator, "prefect-result")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_prefect_decorators(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    # calls -------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        owner = name.rsplit(".", 1)[0] if "." in name else ""

        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            self.flag(node, "eval-exec")
        if name in ("__import__", "importlib.import_module") and node.args and isinstance(node.args[0], ast.Constant):
            if str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                self.flag(node, "pickle-import")

        if name == "torch.load" and not _is_const(_keyword(node, "weights_only"), True):
            self.flag(node, "torch-load")
        if name == "torch.save" or last == "to_pickle":
            self.flag(node, "pickle-writer")
        if last == "read_pickle" or _is_const(_keyword(node, "allow_pickle"), True):
            self.flag(node, "pickle-reader")

        if _is_const(_keyword(node, "trust_remote_code"), True):
            self.flag(node, "trust-remote-code")

        for serializer in ("result_serializer", "serializer"):
            value = _keyword(node, serializer)
            if value is not None and not _is_const(value, "json"):
                self.flag(node, "result-serializer")
        if name in self.prefect_names:  # task(...)/flow(...) or @task(...)/@flow(...)
            self.prefect_sites += 1
            json_results = _is_const(_keyword(node, "result_serializer"), "json")
            no_results = _is_const(_keyword(node, "persist_result"), False)
            if not (json_results or no_results):
                self.flag(node, "prefect-result")

        if owner == "yaml" and last in UNSAFE_YAML_CALLS:
            self.flag(node, "yaml-load")
        if owner == "yaml" and last in ("load", "load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                self.flag(node, "yaml-load")

        shell = _keyword(node, "shell")
        if shell is not None and not _is_const(shell, False):
            self.flag(node, "shell")
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            self.flag(node, "shell")

        if last == "from_pretrained" and WEIGHT_LOADER.match(owner.rsplit(".", 1)[-1]) and (
                owner.rsplit(".", 1)[-1] not in NOT_WEIGHT_LOADERS):
            if not _is_const(_keyword(node, "use_safetensors"), True):
                self.flag(node, "unsafe-weights")
        if _is_const(_keyword(node, "use_safetensors"), False) or _is_const(_keyword(node, "safe_serialization"), False):
            self.flag(node, "unsafe-weights")
        self.generic_visit(node)


def scan_source(text: str, path: str = "<snippet>") -> tuple[list[Finding], int]:
    """(findings, number of Prefect task/flow definitions examined) of one Python source text."""
    scanner = _Scanner(path, text.splitlines())
    scanner.visit(ast.parse(text, filename=path))
    return scanner.findings, scanner.prefect_sites


# Reviewed exceptions, each with its reason: (file, rule).
ALLOWED = {
    # Detoxify's checkpoint format is a torch pickle: the toxicity benchmark writes one, for
    # Detoxify (and the project's pinned-hash loader) to read back, from weights it just built.
    ("bench/toxicity.py", "pickle-writer"),
}


def project_sources() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


# ------------------------------------------------------------------------------- the project --
def test_project_source_has_no_unsafe_pattern():
    files = project_sources()
    findings, prefect_sites = [], 0
    for path in files:
        found, sites = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
        findings += [f for f in found if (f.path, f.rule) not in ALLOWED]
        prefect_sites += sites
    # the scan really covered the project: its stage wrapper and flow are among what it examined
    scanned = {str(p.relative_to(REPO)) for p in files}
    assert {"tasks/core/stage.py", "flows/pipeline.py", "tasks/lib/toxicity.py", "bench/orchestration.py"} <= scanned
    assert len(files) >= 30, f"only {len(files)} source files found under {SOURCE_FOLDERS}"
    assert prefect_sites >= 2, "the scan saw neither the stage task nor the flow decorator"
    assert not findings, f"{len(findings)} unsafe pattern(s) in {len(files)} files:\n" + "\n".join(map(str, findings))


def test_no_pickle_serializer_in_settings_files():
    files = [REPO / name for name in SETTINGS_FILES if (REPO / name).is_file()]
    files += sorted(p for p in (REPO / "deployments").rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
    assert REPO / "deployments" / "prefect.yaml" in files
    pattern = re.compile(r"(?i)pickle|RESULTS_DEFAULT_SERIALIZER|result_serializer")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if pattern.search(line)]
    assert not hits, "a result serializer is configured outside the code:\n" + "\n".join(hits)


# ----------------------------------------------------------------------------- the rules work --
BAD = [
    ("import pickle", "pickle-import"),
    ("import cPickle as p", "pickle-import"),
    ("import dill", "pickle-import"),
    ("from joblib import load", "pickle-import"),
    ("import cloudpickle", "pickle-import"),
    ("m = importlib.import_module('pickle')", "pickle-import"),
    ("torch.save(model, 'm.pt')", "pickle-writer"),
    ("df.to_pickle(path)", "pickle-writer"),
    ("pd.read_pickle(path)", "pickle-reader"),
    ("np.load(path, allow_pickle=True)", "pickle-reader"),
    ("torch.load(path)", "torch-load"),
    ("torch.load(path, weights_only=False)", "torch-load"),
    ("torch.load(path, weights_only=flag)", "torch-load"),
    ("AutoTokenizer.from_pretrained(name, trust_remote_code=True)", "trust-remote-code"),
    ("kwargs = {'trust_remote_code': True}", "trust-remote-code"),
    ("task(run, result_serializer='pickle')", "result-serializer"),
    ("t.with_options(result_serializer='compressed/pickle')", "result-serializer"),
    ("ResultStore(serializer=PickleSerializer())", "pickle-serializer"),
    ("settings = {'PREFECT_RESULTS_DEFAULT_SERIALIZER': 'pickle'}", "pickle-serializer"),
    ("from prefect import task\n@task\ndef f(): pass", "prefect-result"),
    ("from prefect import flow\n@flow(log_prints=True)\ndef f(): pass", "prefect-result"),
    ("import prefect\nwrapped = prefect.task(run, persist_result=True)", "prefect-result"),
    ("eval(text)", "eval-exec"),
    ("exec(code, {})", "eval-exec"),
    ("yaml.load(text)", "yaml-load"),
    ("yaml.load(text, Loader=yaml.Loader)", "yaml-load"),
    ("yaml.load(text, yaml.FullLoader)", "yaml-load"),
    ("yaml.unsafe_load(text)", "yaml-load"),
    ("yaml.full_load(text)", "yaml-load"),
    ("subprocess.run(cmd, shell=True)", "shell"),
    ("subprocess.Popen(cmd, shell=use_shell)", "shell"),
    ("os.system('ls')", "shell"),
    ("AutoModelForCausalLM.from_pretrained(path)", "unsafe-weights"),
    ("transformers.AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=False)", "unsafe-weights"),
    ("LlamaForCausalLM.from_pretrained(path)", "unsafe-weights"),
    ("model.save_pretrained(path, safe_serialization=False)", "unsafe-weights"),
]

GOOD = [
    "model.eval()",
    "self.model.to(device).eval()",
    "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)",
    "yaml.dump(data)",
    "torch.load(path, weights_only=True, map_location='cpu')",
    "subprocess.run([sys.executable, '-m', 'x'], check=True)",
    "subprocess.run(cmd, shell=False)",
    "AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)",
    "AutoTokenizer.from_pretrained(name)",
    "AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)",
    "GenerationConfig.from_pretrained(path)",
    "PeftModel.from_pretrained(base, folder)",
    "from prefect import task\nwrapped = task(run, result_serializer='json', persist_result=True)",
    "from prefect import flow\n@flow(name='x', persist_result=False)\ndef f(): pass",
    "t.with_options(retries=1, result_storage=path)",
    "import json\njson.loads(text)",
    "'''Checkpoints are torch pickles: only use files you trust.'''",
    "# import pickle\nx = 1",
    "task = queue.get()\ntask(run)",  # a local `task` that is not Prefect's
]


@pytest.mark.parametrize("snippet, rule", BAD, ids=[f"{rule}:{snippet[:40]}" for snippet, rule in BAD])
def test_each_rule_fires_on_its_pattern(snippet, rule):
    findings, _ = scan_source(snippet, "bad.py")
    assert rule in {f.rule for f in findings}, f"{rule} did not fire on {snippet!r}: {findings}"
    finding = next(f for f in findings if f.rule == rule)
    assert str(finding).startswith(f"bad.py:{finding.line}: {rule}: ") and finding.line >= 1


@pytest.mark.parametrize("snippet", GOOD)
def test_safe_code_is_not_flagged(snippet):
    findings, _ = scan_source(snippet, "good.py")
    assert findings == [], "\n".join(map(str, findings))


def test_every_rule_is_exercised():
    assert {rule for _, rule in BAD} == set(RULES)


def test_a_finding_names_file_and_line():
    findings, _ = scan_source("import json\n\nvalue = eval(text)\n", "tasks/example.py")
    assert [str(f) for f in findings] == [
        "tasks/example.py:3: eval-exec: eval()/exec() runs text as code\n    value = eval(text)"]


def test_the_real_stage_task_would_be_flagged_without_its_json_serializer():
    path = REPO / "tasks" / "core" / "stage.py"
    text = path.read_text(encoding="utf-8")
    assert scan_source(text)[0] == []
    assert text.count('result_serializer="json",') == 1
    findings, sites = scan_source(text.replace('result_serializer="json",', ""), "tasks/core/stage.py")
    assert sites == 1 and [f.rule for f in findings] == ["prefect-result"]
    assert findings[0].text.strip() == "wrapped = task("
