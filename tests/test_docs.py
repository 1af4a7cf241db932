"""The user documentation runs: examples in docs/*.md are executed, and the docs cover what exists.

A fenced ``python`` or ``bash`` block preceded by an HTML comment ``<!-- test -->`` is runnable.
Options after ``test:`` (space-separated):

- ``needs=NAME[,NAME...]``: registered methods whose weights must be installed, or ``data`` for
  ``../shared/data``; the block is skipped, with the reason, where one is missing;
- ``viewer``: a headless napari ``ViewerModel`` is passed in as ``viewer`` (as in napari's console);
- ``slow``: run only with ``NAPARI_FUSION_DOCS_SLOW=1`` (e.g. fine-tuning; still syntax-checked);
- ``creates=PATH[,PATH...]``: files a bash block must leave behind (relative to its folder).

Python blocks run each in a fresh namespace in an empty temporary folder; registry changes they make
(e.g. registering an example method) are undone afterwards. Bash blocks are interpreted in-process
(one import of the package for all of them): ``VAR=value``, ``VAR=$(python -c "...")`` and
``napari-fusion ...`` / ``python -m MODULE ...`` lines; anything else in a runnable bash block is
an error, so a documented command cannot silently go untested.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MY_DOCS = ("index.md", "architecture.md", "api.md", "cli.md", "data.md", "methods.md", "io-and-geometry.md")
SLOW_ENV = "NAPARI_FUSION_DOCS_SLOW"

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*test(?::\s*(.*?))?\s*-->\s*$")


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _parse_options(text: str | None) -> dict:
    opts: dict = {"needs": [], "creates": [], "viewer": False, "slow": False}
    for tok in (text or "").split():
        key, _, val = tok.partition("=")
        if key in ("needs", "creates"):
            opts[key] += [v for v in val.split(",") if v]
        elif key in ("viewer", "slow") and not val:
            opts[key] = True
        else:
            raise ValueError(f"unknown docs test option {tok!r}")
    return opts


def parse_blocks(path: Path) -> tuple[list[Block], list[Block]]:
    """(runnable blocks, all fenced blocks) of a markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    runnable, every = [], []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: unclosed code fence")
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        mark = _MARK.match(lines[prev].strip()) if prev >= 0 else None
        block = Block(path.name, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n")
        every.append(block)
        if mark:
            block.options = _parse_options(mark.group(1))
            runnable.append(block)
        i = j + 1
    return runnable, every


def _collect(lang: str) -> list[Block]:
    out = []
    for name in MY_DOCS:
        p = DOCS / name
        if p.exists():
            out += [b for b in parse_blocks(p)[0] if b.lang == lang]
    return out


PY_BLOCKS = _collect("python")
SH_BLOCKS = _collect("bash")


# ------------------------------------------------------------------------------------------------
# running blocks
# ------------------------------------------------------------------------------------------------
def _missing_needs(needs: list[str]) -> str | None:
    from napari_fusion.methods.registry import get_method
    from napari_fusion.training.data import shared_data_dir

    for n in needs:
        if n == "data":
            if shared_data_dir() is None:
                return "needs ../shared/data"
            continue
        try:
            m = get_method(n)
        except KeyError:
            return f"needs method {n!r}, which this build does not register yet"
        if m.weights_path is not None and not m.weights_path.is_file():
            return f"needs the weights of {n!r} ({m.weights_path.name} is not installed)"
    return None


def _skip_unless_runnable(block: Block) -> None:
    compile(block.code, block.id, "exec") if block.lang == "python" else None
    if block.options["slow"] and os.environ.get(SLOW_ENV) != "1":
        pytest.skip(f"slow example; set {SLOW_ENV}=1 to run it")
    why = _missing_needs(block.options["needs"])
    if why:
        pytest.skip(why)


@pytest.fixture
def registry_snapshot():
    """Undo registrations and cached runners an example adds to the global method registry."""
    from napari_fusion.methods import registry

    registry.list_methods()  # load the built-in families first
    methods = dict(registry._METHODS)
    yield
    added = [k for k in registry._RUNNERS if k[0] not in methods or registry._METHODS.get(k[0]) is not methods[k[0]]]
    for key in added:  # runners of example methods go; loaded weights of real ones stay cached
        registry._RUNNERS.pop(key, None)
    registry._METHODS.clear()
    registry._METHODS.update(methods)


@pytest.fixture(scope="module")
def headless_viewer_factory():
    pytest.importorskip("napari")
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # so viewer.open_sample / open(plugin=...) find us
    return ViewerModel


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.id for b in PY_BLOCKS])
def test_python_example(block: Block, tmp_path, monkeypatch, registry_snapshot, request):
    _skip_unless_runnable(block)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    if block.options["viewer"]:
        ns["viewer"] = request.getfixturevalue("headless_viewer_factory")()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.code, block.id, "exec"), ns)


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_SUBST = re.compile(r'^(\w+)=\$\(python -c "(.*)"\)$')


def _expand(text: str, env: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise AssertionError(f"undefined variable ${name} in a documented command")
        return env[name]

    return _VAR.sub(repl, text)


def _logical_lines(code: str) -> list[str]:
    out, cur = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        stripped = cur.split(" #")[0].strip() if not cur.lstrip().startswith("#") else ""
        if stripped:
            out.append(stripped)
        cur = ""
    return out


def run_bash_block(code: str) -> list[tuple[str, int, str]]:
    """Interpret a documented bash block in-process; returns (command, exit code, output) per command."""
    from napari_fusion.cli import main

    env: dict[str, str] = {}
    done = []
    for line in _logical_lines(code):
        m = _SUBST.match(line)
        if m:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(m.group(2).replace('\\"', '"'), {"__name__": "__docs__"})
            env[m.group(1)] = buf.getvalue().strip()
            continue
        m = re.match(r"^(\w+)=(\S+)$", line)
        if m:
            env[m.group(1)] = _expand(m.group(2), env)
            continue
        argv = shlex.split(_expand(line, env))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            if argv[0] == "napari-fusion":
                try:
                    rc = main(argv[1:])
                except SystemExit as stop:  # --help
                    rc = int(stop.code or 0)
            elif argv[:2] == ["python", "-m"] and len(argv) >= 3:
                old = sys.argv
                sys.argv = [argv[2], *argv[3:]]
                try:
                    runpy.run_module(argv[2], run_name="__main__", alter_sys=False)
                    rc = 0
                except SystemExit as stop:
                    rc = int(stop.code or 0)
                finally:
                    sys.argv = old
            else:
                raise AssertionError(f"runnable bash blocks may only hold napari-fusion / python -m commands: {line!r}")
        done.append((line, rc, buf.getvalue()))
    return done


@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.id for b in SH_BLOCKS])
def test_shell_example(block: Block, tmp_path, monkeypatch, registry_snapshot):
    _skip_unless_runnable(block)
    monkeypatch.chdir(tmp_path)
    results = run_bash_block(block.code)
    assert results, f"{block.id}: no command in a runnable block"
    for cmd, rc, out in results:
        assert rc == 0, f"{block.id}: `{cmd}` exited with {rc}:\n{out}"
    for rel in block.options["creates"]:
        assert (tmp_path / rel).exists(), f"{block.id}: expected {rel} after running the block; have {sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*'))}"


# ------------------------------------------------------------------------------------------------
# the docs cover what exists
# ------------------------------------------------------------------------------------------------
def test_every_doc_has_runnable_examples_where_promised():
    assert len([b for b in PY_BLOCKS if b.doc == "api.md"]) >= 15
    assert len([b for b in SH_BLOCKS if b.doc == "cli.md"]) >= 4


def test_every_api_function_is_documented_and_exercised():
    import napari_fusion

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    code = "".join(b.code for b in PY_BLOCKS if b.doc == "api.md")
    for name in napari_fusion._API:
        assert re.search(rf"^## .*`{name}\(", api, re.M), f"docs/api.md has no section for {name}()"
        assert re.search(rf"\b{name}\(", code), f"no runnable example in docs/api.md calls {name}()"


def _subparsers():
    import argparse

    from napari_fusion.cli import build_parser

    ap = build_parser()
    action = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_cli_command_and_option_is_documented():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, sub in _subparsers().items():
        assert re.search(rf"^## `napari-fusion {re.escape(name)}[ `]", text, re.M), f"docs/cli.md has no section for {name}"
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in text, f"docs/cli.md does not mention {name} {opt}"


@pytest.mark.parametrize("command", ["", "fuse", "fuse-large", "enhance", "segment", "evaluate", "methods", "demo"])
def test_cli_help(command, capsys):
    from napari_fusion.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"] if command else ["--help"])
    assert stop.value.code == 0
    assert "usage: napari-fusion" in capsys.readouterr().out


def test_methods_doc_names_every_method():
    from napari_fusion.methods.registry import list_methods

    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    names = {m.name for m in list_methods()} | {"gifnet", "multitaskvif", "tdfusion", "tdfusion-brats"}
    for n in names:
        assert f"`{n}`" in text, f"docs/methods.md does not describe {n}"


def test_data_doc_names_every_shipped_sample_and_licence():
    from napari_fusion.samples import SAMPLE_KEYS, sample_paths

    text = (DOCS / "data.md").read_text(encoding="utf-8")
    for key in SAMPLE_KEYS:
        assert f"`{key}`" in text, f"docs/data.md does not list sample {key}"
        for p in sample_paths(key):
            assert p.name in text, f"docs/data.md does not name {p.name}"
    for must in ("CC BY-NC-SA", "non-profit", "MIT", "public domain"):
        assert must in text


_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
_OTHERS = ("usage.md",)  # pages other engineers write; may land after this one


def test_relative_links_resolve():
    for name in MY_DOCS:
        text = (DOCS / name).read_text(encoding="utf-8")
        for target, _anchor in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            dest = (DOCS / target).resolve()
            if not dest.exists() and Path(target).name in _OTHERS:
                continue
            assert dest.exists(), f"docs/{name}: broken link to {target}"


def test_anchor_links_resolve():
    def anchors(path: Path) -> set[str]:
        out = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                title = line.lstrip("#").strip().lower()
                slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
                out.add(slug)
        return out

    for name in MY_DOCS:
        text = (DOCS / name).read_text(encoding="utf-8")
        for target, anchor in _LINK.findall(text):
            if anchor and target in MY_DOCS:
                assert anchor[1:] in anchors(DOCS / target), f"docs/{name}: no heading {anchor} in {target}"


def test_parser_finds_marked_blocks_only(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n<!-- test: needs=a,b viewer -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n")
    runnable, every = parse_blocks(md)
    assert [b.code for b in runnable] == ["x = 1\n"] and len(every) == 2
    assert runnable[0].options["needs"] == ["a", "b"] and runnable[0].options["viewer"]
    with pytest.raises(ValueError, match="unknown docs test option"):
        _parse_options("sloww")
