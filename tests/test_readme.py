"""The documentation's promises that can be checked mechanically: the code of the "Python API" and "Adding an
objective" pages runs as written and does what the prose around it says, and CI runs the README's test command."""

import re
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from smallvit.config import load_recipe
from smallvit.data.batch import Batch, View
from smallvit.engine.experiment import build_model
from smallvit.errors import ConfigError, SmallViTError
from smallvit.models.backbone import BackboneOutput
from smallvit.objectives import OBJECTIVES, ObjectiveSetup, StepContext, build_objective, parse_objective_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of ``text``, dedented (a block inside a list item is indented)."""
    fences = re.finditer(rf"^( *)```{language}\n(.*?)^\1```$", text, re.M | re.S)
    return [textwrap.dedent(match.group(2)) for match in fences]


def run(code: str, name: str, scope: dict | None = None) -> dict:
    scope = {"__name__": name} if scope is None else scope
    exec(compile(code, f"docs ({name})", "exec"), scope)
    return scope


API = (DOCS / "python-api.md").read_text()
OBJECTIVE = (DOCS / "adding-an-objective.md").read_text()
OBJECTIVE_FILE, OBJECTIVE_TESTS = code_blocks(OBJECTIVE, "python")
(RECIPE,) = code_blocks(OBJECTIVE, "yaml")
MODULE = "smallvit.objectives.rows"  # the name the page's tests import the objective file under


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- Python API


def test_python_api_example_runs():
    library, _ = code_blocks(API, "python")
    out = run(library, "python-api")["out"]
    assert torch.isfinite(out.loss) and "acc1" in out.metrics


def test_a_loop_of_your_own_trains_every_parameter_with_a_tensor_level_loss(capsys):
    _, loop = code_blocks(API, "python")
    scope = run(loop, "own-loop")
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["step 0", "step 1", "step 2"]
    first_relations = float(printed[0].rsplit(" ", 1)[1])
    assert abs(first_relations - torch.log(torch.tensor(9.0)).item()) < 0.5  # 9 classes, barely trained
    optimizer, modules = scope["optimizer"], scope["modules"]
    assert all(optimizer.state[p]["step"] == 3 for p in modules.parameters())
    # the prose after the loop: the head's own loss is the same, computed in chunks
    head, tokens = scope["relation_head"], torch.randn(3, 64, scope["backbone"].embed_dim)
    targets = scope["pair_targets"](scope["grid_labels"], 3)
    chunked, accuracy = head.loss(tokens, targets)
    assert torch.allclose(chunked, scope["relation_loss"](head(tokens), targets), atol=1e-5) and 0 <= accuracy <= 1


# ---------------------------------------------------------------- Adding an objective


@pytest.fixture
def objective_file(monkeypatch):
    """The page's objective file, imported as :data:`MODULE`; the registry is restored afterwards."""
    before = dict(OBJECTIVES)
    module = types.ModuleType(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, module)
    try:
        run(OBJECTIVE_FILE, MODULE, module.__dict__)
        yield module
    finally:
        OBJECTIVES.clear()
        OBJECTIVES.update(before)


def test_the_objective_file_registers_and_its_tests_pass(objective_file):
    assert OBJECTIVES["rows"] is objective_file.Rows
    assert f"from {MODULE} import" in OBJECTIVE_TESTS
    scope = run(OBJECTIVE_TESTS, "test_rows")
    tests = [test for name, test in scope.items() if name.startswith("test_")]
    assert len(tests) == 3
    for test in tests:
        test()


def test_the_objective_reads_masked_encodings_with_no_code_of_its_own(objective_file):
    tokens, keep = torch.randn(2, 6, 16), torch.tensor([[0, 4, 5], [3, 1, 2]])

    def backbone(images, keep=None):  # fixed tokens on a 2×3 grid; a masked forward returns the kept ones
        kept = tokens if keep is None else tokens[torch.arange(2)[:, None], keep]
        return BackboneOutput(kept.mean(1), kept, (2, 3))

    setup = ObjectiveSetup(16, (2, 3), 4, 8, 3, 10, 2)
    rows = build_objective(parse_objective_config({"name": "rows", "masked_by": "mae"}), setup)
    ctx = StepContext(Batch({"main": View(torch.zeros(2, 3, 8, 12), None, torch.arange(2))}), backbone)
    ctx.publish_mask("mae", "main", keep)
    kept = tokens[torch.arange(2)[:, None], keep]
    rows_of_kept = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert torch.allclose(rows(ctx).loss, objective_file.row_loss(rows.head(kept), rows_of_kept))


def test_a_second_registration_fails_as_the_readme_says(objective_file):
    promised = re.search(r"raises `SmallViTError: ([^`]*)`", " ".join(OBJECTIVE.split())).group(1)
    expected = promised.replace("<module>", MODULE).replace("<class>", "Rows")
    with pytest.raises(SmallViTError) as err:
        run(OBJECTIVE_FILE, "again")
    assert str(err.value) == expected
    assert OBJECTIVES["rows"] is objective_file.Rows


def test_the_recipe_trains_the_objective_with_its_run_weight(objective_file, tmp_path):
    path = tmp_path / "my-rows.yaml"
    path.write_text(RECIPE)
    (stage,) = load_recipe(str(path)).stages
    assert [o.name for o in stage.objectives] == ["supervised", "rows"] and not stage.model.pos_embed
    weight = stage.objective_weights[1]
    assert weight.weight == 0.5 and weight.weight_schedule.kind == "warmup"
    with pytest.raises(ConfigError, match="weight"):
        parse_objective_config({"name": "rows", "weight": 0.5})

    model = build_model(stage, num_classes=10, num_train=8)
    batch = Batch({"main": View(torch.randn(2, 3, 32, 32), torch.arange(2), torch.arange(2))})
    loss, metrics = model(batch, [1.0, weight.weight])
    assert torch.isfinite(loss) and {"rows/loss", "rows/acc1", "supervised/acc1"} <= set(metrics)
    assert torch.allclose(loss, metrics["supervised/loss"] + 0.5 * metrics["rows/loss"])
    loss.backward()
    assert model.objectives[1].head.weight.grad is not None


def test_ci_runs_the_readme_test_command():
    command = re.search(r"(python -m pytest[^\n`]*)", README).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()
