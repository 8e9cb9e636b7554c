"""The kind walkthrough (README "Run it on kind", hack/kind/up.sh), checked without Docker.

The script runs end to end with stand-ins for docker, kind, kubectl and helm on PATH: each records
its command line (and what it read on stdin) and succeeds. That gives the exact sequence of steps
and commands, which must be the README's, and the state the script applies, which must render.
What needs a container engine (the cluster, the image, the chart server, pulls) is not checked.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.render.state import StateMeta, render_state

REPO_ROOT = Path(__file__).resolve().parents[2]
UP = REPO_ROOT / "hack" / "kind" / "up.sh"
DOWN = REPO_ROOT / "hack" / "kind" / "down.sh"
SCRIPTS = [UP, DOWN]
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
TENANT_RBAC = REPO_ROOT / "hack" / "kind" / "tenant-rbac.yaml"
EXAMPLE = REPO_ROOT / "examples" / "ml-serving-stack"
TOOLS = ("docker", "kind", "kubectl", "helm")
IMAGE_ID = "sha256:" + "0" * 64

# Records `[tool, *argv]` as a JSON line (to the same append-only file as the script's stdout, so
# the order is exact), keeps what it reads from `-f -`, and answers the script's queries.
FAKE_TOOL = """\
import json, os, sys
from pathlib import Path

tool, args = Path(sys.argv[0]).name, sys.argv[1:]
log = os.environ["FAKE_LOG"]
record = {"argv": [tool, *args]}
if "-f" in args and args[args.index("-f") + 1] == "-":
    stdin = Path(os.environ["FAKE_DIR"]) / f"stdin-{os.getpid()}"
    stdin.write_text(sys.stdin.read())
    record["stdin"] = str(stdin)
with open(log, "a") as out:
    out.write("+ " + json.dumps(record) + "\\n")
if args[:2] == ["get", "clusters"]:
    print(os.environ.get("FAKE_CLUSTERS", ""))
elif args[:2] == ["image", "inspect"]:
    print(os.environ["FAKE_IMAGE_ID"])
elif tool == "kubectl" and "wait" in args[:3]:
    sys.exit(int(os.environ.get("FAKE_WAIT_RC", "0")))
"""


@dataclass
class Step:
    title: str
    commands: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    returncode: int
    steps: list[Step]
    stderr: str

    def commands(self) -> list[list[str]]:
        return [c["argv"] for step in self.steps for c in step.commands]


def run_up(tmp_path: Path, **env: str) -> Run:
    """hack/kind/up.sh with the stand-in tools; its steps and their commands, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "fake-tool"
    fake.write_text(f"#!{sys.executable} -IS\n{FAKE_TOOL}")
    fake.chmod(0o755)
    for tool in TOOLS:
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(fake)
    log = tmp_path / "log"
    log.write_text("")
    with log.open("a") as stdout:
        result = subprocess.run(
            ["bash", str(UP)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "PATH": f"{bin_dir}:/usr/bin:/bin",
                "HOME": str(tmp_path),
                "TMPDIR": str(tmp_path),
                "FAKE_LOG": str(log),
                "FAKE_DIR": str(tmp_path),
                "FAKE_IMAGE_ID": IMAGE_ID,
                **env,
            },
            timeout=60,
            check=False,
        )
    steps: list[Step] = []
    for line in log.read_text().splitlines():
        if line.startswith("==> "):
            steps.append(Step(line[4:]))
        elif line.startswith("+ "):
            assert steps, f"a command before the first step: {line}"
            steps[-1].commands.append(json.loads(line[2:]))
    return Run(result.returncode, steps, result.stderr)


def sourced(expression: str) -> str:
    """`expression` evaluated by bash with up.sh sourced (settings and functions, no main)."""
    result = subprocess.run(
        # $0 must not be up.sh: that is how up.sh tells being run from being sourced.
        ["bash", "-c", f'source "$1" && {expression}', "bash", str(UP)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout


def setting(name: str) -> str:
    return sourced(f'printf "%s" "${name}"')


def readme_kind_steps() -> list[tuple[str, list[str]]]:
    """(title, commands) of the numbered steps in README's "Run it on kind"."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Run it on kind\n", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. \*\*(.+?)\*\*(.*?)(?=^\d+\. |^$)", section, re.M | re.S)
    return [
        (title, [c for c in re.findall(r"`([^`]+)`", body) if c.split()[0] in TOOLS])
        for title, body in items
    ]


def normalized(argv: list[str]) -> list[str]:
    """Paths as README writes them: relative to the checkout."""
    return [arg.replace(f"{REPO_ROOT}/", "") for arg in argv]


def is_subsequence(wanted: list[str], argv: list[str]) -> bool:
    remaining = iter(argv)
    return all(any(token == arg for arg in remaining) for token in wanted)


def matches(readme_command: str, argv: list[str]) -> bool:
    """Same tool, and README's words (`…` stands for the rest) in the recorded order."""
    words = [w for w in shlex.split(readme_command) if w != "…"]
    return argv[0] == words[0] and is_subsequence(words[1:], normalized(argv)[1:])


@pytest.fixture(scope="module")
def up_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_up(tmp_path_factory.mktemp("kind-up"))
    assert run.returncode == 0, run.stderr
    return run


# --- the scripts as shell -----------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- README and script agree --------------------------------------------------------------------


def test_readme_lists_the_steps_the_script_runs(up_run: Run) -> None:
    readme = readme_kind_steps()
    assert [title for title, _ in readme] == [step.title for step in up_run.steps]


def test_every_readme_command_is_run_in_its_step(up_run: Run) -> None:
    for (title, commands), step in zip(readme_kind_steps(), up_run.steps, strict=True):
        assert commands, f"README's step {title!r} shows no command"
        recorded = [c["argv"] for c in step.commands]
        position = 0
        for command in commands:
            found = next(
                (i for i in range(position, len(recorded)) if matches(command, recorded[i])),
                None,
            )
            assert found is not None, (
                f"README step {title!r}: `{command}` is not among the script's commands there "
                f"(after the ones before it):\n" + "\n".join(map(shlex.join, recorded))
            )
            position = found


def test_readme_points_at_the_scripts_and_not_at_helm_admin() -> None:
    section = (REPO_ROOT / "README.md").read_text().split("### Run it on kind\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "hack/kind/up.sh" in section and "hack/kind/down.sh" in section
    # The walkthrough uses the tenant RoleBinding; helmAdmin is single-tenant only.
    commands = [c for _, step_commands in readme_kind_steps() for c in step_commands]
    assert not [c for c in commands if "helmAdmin" in c]
    assert "--set rbac.helmAdmin=true" not in section


def test_every_kubectl_and_helm_command_names_the_cluster(up_run: Run) -> None:
    context = f"kind-{setting('CLUSTER')}"
    for argv in up_run.commands():
        if argv[0] == "kubectl":
            assert argv[1:3] == ["--context", context], argv
        if argv[0] == "helm" and argv[1] not in ("package", "repo"):  # local-only commands
            assert argv[argv.index("--kube-context") + 1] == context, argv


def test_the_operator_runs_as_tenants_not_as_helm_admin(up_run: Run) -> None:
    (install,) = [a for a in up_run.commands() if a[:3] == ["helm", "upgrade", "--install"]]
    assert not any("helmAdmin" in arg for arg in install)
    assert f"podAnnotations.image-id={IMAGE_ID}" in install  # a rebuilt image rolls the pod
    assert "--wait" in install


def test_an_existing_cluster_is_reused(tmp_path: Path) -> None:
    run = run_up(tmp_path, FAKE_CLUSTERS=f"other\n{setting('CLUSTER')}")
    assert run.returncode == 0, run.stderr
    assert not [a for a in run.commands() if a[:3] == ["kind", "create", "cluster"]]


def test_a_state_that_never_gets_ready_fails_with_its_conditions(tmp_path: Path) -> None:
    run = run_up(tmp_path, FAKE_WAIT_RC="1")
    assert run.returncode != 0
    last = run.commands()[-1]
    assert last[3:] == ["get", "hfs,hfr", "-n", setting("NAMESPACE"), "-o", "wide"], last
    assert "logs -n helmfile-system deploy/helmfile-operator" in run.stderr


# --- what the script relies on ------------------------------------------------------------------


def test_kind_config_names_the_cluster_and_its_one_node() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == setting("CLUSTER")
    # One control-plane node and no workers: kind names it <cluster>-control-plane, and it runs
    # every pod (the script pulls the example's images there).
    assert config["nodes"] == [{"role": "control-plane"}]
    assert setting("NODE") == f"{config['name']}-control-plane"
    # Pods need kind's default CNI to reach the chart server.
    assert not (config.get("networking") or {}).get("disableDefaultCNI")


def test_the_applied_state_is_the_example_with_only_the_url_changed(up_run: Run) -> None:
    (applied,) = [
        c for step in up_run.steps for c in step.commands if c["argv"][-2:] == ["-f", "-"]
    ]
    state = yaml.safe_load(Path(applied["stdin"]).read_text())
    example = yaml.safe_load((EXAMPLE / "state.yaml").read_text())
    (repository,) = example["spec"]["repositories"]
    assert repository["url"] == setting("EXAMPLE_URL")
    repository["url"] = setting("CHARTS_URL")
    assert state == example

    spec = HelmfileStateSpec.model_validate(state["spec"])
    meta = StateMeta(
        name=state["metadata"]["name"],
        namespace=state["metadata"]["namespace"],
        labels=state["metadata"].get("labels") or {},
        annotations={},
    )
    rendered = render_state(meta, spec)
    assert {r.spec.chart.repository.url for r in rendered.releases} == {setting("CHARTS_URL")}
    assert len(rendered.releases) == len(state["spec"]["releases"])


def test_tenant_rbac_lets_the_states_service_account_deploy() -> None:
    state = yaml.safe_load((EXAMPLE / "state.yaml").read_text())
    namespace = state["metadata"]["namespace"]
    assert namespace == setting("NAMESPACE") and state["metadata"]["name"] == setting("STATE")
    account = state["spec"].get("serviceAccountName") or "default"
    documents = {d["kind"]: d for d in yaml.safe_load_all(TENANT_RBAC.read_text())}
    assert documents["Namespace"]["metadata"]["name"] == namespace
    binding = documents["RoleBinding"]
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "admin",
    }
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding[
        "subjects"
    ]


def test_staged_charts_replace_only_placeholder_images(tmp_path: Path) -> None:
    staged = tmp_path / "charts"
    sourced(f'stage_charts "$EXAMPLE/charts" {shlex.quote(str(staged))}')
    placeholder, stand_in = setting("PLACEHOLDER_IMAGES"), setting("STAND_IN_IMAGE")
    expected_images = {stand_in}
    for chart in sorted(p for p in (EXAMPLE / "charts").iterdir() if p.is_dir()):
        image = yaml.safe_load((chart / "values.yaml").read_text())["image"]
        copy = staged / chart.name
        originals = {p.relative_to(chart): p.read_bytes() for p in chart.rglob("*") if p.is_file()}
        copies = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        assert originals.keys() == copies.keys()
        changed = {path for path in originals if originals[path] != copies[path]}
        if image["repository"].startswith(placeholder):
            assert changed == {Path("templates/deployment.yaml")}, chart.name
            template = copies[Path("templates/deployment.yaml")].decode()
            assert f'image: "{stand_in}"' in template and ".Values.image" not in template
        else:
            assert not changed, chart.name
            expected_images.add(f"{image['repository']}:{image['tag']}")
    pulled = set(sourced(f"chart_images {shlex.quote(str(staged))}").split())
    assert pulled == expected_images


def test_the_images_pulled_are_the_ones_the_staged_charts_name(up_run: Run) -> None:
    pulls = [a[-1] for a in up_run.commands() if a[:2] == ["docker", "exec"] and "pull" in a]
    assert pulls, "no image is pulled into the node"
    assert all(a[2] == setting("NODE") for a in up_run.commands() if a[:2] == ["docker", "exec"])
    assert setting("STAND_IN_IMAGE") in pulls
    assert not [p for p in pulls if p.startswith(setting("PLACEHOLDER_IMAGES"))]


def test_the_chart_server_is_on_the_kind_network_under_the_state_url_host(up_run: Run) -> None:
    (create,) = [a for a in up_run.commands() if a[:2] == ["docker", "create"]]
    name = create[create.index("--name") + 1]
    assert create[create.index("--network") + 1] == "kind"
    port = create[create.index("http.server") + 1]
    assert setting("CHARTS_URL") == f"http://{name}:{port}"
    (index,) = [a for a in up_run.commands() if a[:3] == ["helm", "repo", "index"]]
    assert index[index.index("--url") + 1] == setting("CHARTS_URL")
