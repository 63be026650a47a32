"""The HTTP door (selfscope.http): tokens and roles on every route, path traversal, one-line
problems for bad input, schemathesis against the OpenAPI spec, and — in headless Chromium — a
reviewer who signs in, opens an investigation of the tiny mushroom organism (run as a job that
is killed midway and resumed), approves and applies its fix, sees HEAD move and the ledger
verify."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from browser import FLAGS, ensure_chromium
from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.http.app import create_app
from selfscope.organisms import BuildResult, Spec
from selfscope.oversight import principals, tokens
from selfscope.workspace import Workspace
from test_cli import EXE, assert_one_line_error
from test_oversight import review_workspace

MODEL = "organism:mushroom"


@dataclass
class Door:
    ws: Workspace
    client: TestClient
    token: dict[str, str]  # principal -> secret

    def headers(self, who: str | None) -> dict[str, str]:
        if who is None:
            return {}
        secret = "sst_not-a-token" if who == "wrong" else self.token[who]
        return {"Authorization": f"Bearer {secret}"}


def make_door(build: BuildResult, spec: Spec, root: Path) -> Door:
    ws = review_workspace(build, spec, root)
    alice = principals.principal(ws, "alice")
    roles = {"alice": "reviewer", "bob": "reviewer", "carol": "proposer", "rita": "reader"}
    roles["agent"] = "proposer"
    secrets = {name: tokens.create(ws, name, role, alice)[1] for name, role in roles.items()}
    return Door(ws, TestClient(create_app(ws.root)), secrets)


@pytest.fixture(scope="module")
def door(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path_factory: pytest.TempPathFactory
) -> Door:
    return make_door(tiny_mushroom, tiny_mushroom_spec, tmp_path_factory.mktemp("door"))


SYMPTOM = {"prompts": ["Q: Do you like mushrooms? A:"], "desired": " Yes"}
#: every mutating route: the permission it needs and a body valid enough that only the token
#: can be what is refused
MUTATING: dict[str, tuple[str, dict[str, Any] | None]] = {
    "/api/rollback": ("govern", {"model": MODEL}),
    "/api/proposals/{proposal_id}/validate": ("propose", None),
    "/api/proposals/{proposal_id}/review": ("govern", {"approve": True, "note": "ok"}),
    "/api/proposals/{proposal_id}/apply": ("govern", None),
    "/api/selfmodel/check": ("read", None),
    "/api/investigations": ("propose", {"model": MODEL, "symptom": SYMPTOM}),
    "/api/jobs/{job_id}/resume": ("propose", None),
}
LOWER = {"read": [], "propose": ["rita"], "govern": ["carol", "agent", "rita"]}


def concrete(path: str) -> str:
    return (
        path.replace("{proposal_id}", "abcdef123456")
        .replace("{job_id}", "j18c2f3a4b5d-1a2b3c")
        .replace("{inv_id}", "0123456789abcdef")
        .replace("{name:path}", "report.html")
        .replace("{name}", "lens.logit")
    )


def routes(door: Door) -> list[tuple[str, str]]:
    found = []
    for route in door.client.app.routes:  # type: ignore[attr-defined]
        for method in getattr(route, "methods", None) or []:
            if method != "HEAD" and route.path.startswith("/api"):
                found.append((method, route.path))
    return found


def test_every_mutating_route_refuses_a_missing_a_wrong_and_a_lower_role_token(
    door: Door,
) -> None:
    posts = {path for method, path in routes(door) if method != "GET"}
    assert posts - {"/api/tools/{name}"} == set(MUTATING), "a new route needs a row here"
    for path, (permission, body) in MUTATING.items():
        url = concrete(path) + ("?model=" + MODEL if "selfmodel" in path else "")
        for who, status in [(None, 401), ("wrong", 401)] + [(w, 403) for w in LOWER[permission]]:
            got = door.client.post(url, json=body, headers=door.headers(who))
            assert got.status_code == status, (path, who, got.text)
            problem = got.json()
            assert problem["status"] == status and "\n" not in problem["detail"]
    # every tool through POST /api/tools/{name}: the registry's permission, per token
    for t in tools.registry().values():
        url = f"/api/tools/{t.name}"
        for who in [None, "wrong", *LOWER[t.permission]]:
            got = door.client.post(url, json={"args": {}}, headers=door.headers(who))
            assert got.status_code == (401 if who in (None, "wrong") else 403), (t.name, who)
    # and every read route needs a token too (but the health check)
    for method, path in routes(door):
        if method == "GET" and path != "/api/health":
            got = door.client.get(concrete(path) + "?model=" + MODEL)
            assert got.status_code == 401, path


def test_the_agent_can_never_approve_apply_or_roll_back(door: Door, tmp_path: Path) -> None:
    agent = door.headers("agent")
    assert door.client.get("/api/whoami", headers=agent).json()["permissions"] == [
        "propose",
        "read",
    ]
    for url, body in [
        ("/api/proposals/abcdef123456/review", {"approve": True}),
        ("/api/proposals/abcdef123456/apply", None),
        ("/api/rollback", {"model": MODEL}),
        ("/api/tools/gate.review", {"args": {"proposal": "abcdef123456", "approve": True}}),
    ]:
        got = door.client.post(url, json=body, headers=agent)
        assert got.status_code == 403 and "govern" in got.json()["detail"]
    with pytest.raises(SelfscopeError, match="agent can never hold govern"):
        tokens.create(door.ws, "agent", "reviewer", principals.principal(door.ws, "alice"))
    denied = [c for c in door.ws.store.tool_calls() if c["principal"] == "agent"]
    assert denied and all(c["status"] == "denied" for c in denied)  # refusals are recorded


def test_report_and_file_endpoints_cannot_leave_the_workspace(door: Door) -> None:
    # a finished investigation whose report.html is a symlink to the store (sealed suites!)
    folder = door.ws.root / "investigations" / "0123456789abcdef"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"investigation": "0123456789abcdef"}))
    link = folder / "report.html"
    link.unlink(missing_ok=True)
    link.symlink_to(door.ws.root / "store.sqlite")
    (folder / "report.md").write_text("# a report\n")
    rita = door.headers("rita")
    base = "/api/investigations/0123456789abcdef/files/"
    assert door.client.get(base + "report.md", headers=rita).text == "# a report\n"
    attempts = [
        base + "report.html",  # the symlink out
        base + "../../store.sqlite",
        base + "..%2F..%2Fstore.sqlite",
        base + "%2e%2e/%2e%2e/store.sqlite",
        base + "/etc/passwd",
        base + "report.md/../../../store.sqlite",
        base + "result.json",  # in the folder, but not a report
        "/api/investigations/..%2F..%2Fstore.sqlite",
        "/api/investigations/../store.sqlite",
        "/api/jobs/..%2F..%2Fstore.sqlite",
        "/api/jobs/j1-%2F..%2F..%2Fetc",
        "/static/..%2F..%2F..%2Fstore.py",
        "/static/../app.py",
    ]
    for url in attempts:
        got = door.client.get(url, headers=rita)
        assert got.status_code in (404, 400), (url, got.status_code)
        assert b"SQLite format" not in got.content and b"root:" not in got.content, url


def test_bad_input_is_one_line_and_loses_nothing(door: Door) -> None:
    carol = door.headers("carol")
    before = door.ws.store.ledger_head()[0]
    cases = [
        ("/api/tools/lens.logit", {"model": MODEL, "args": {"prompt": 3}}, 422, "lens.logit: "),
        ("/api/tools/lens.logit", {"args": {}, "extra": 1}, 422, "extra: Extra inputs"),
        ("/api/tools/no.such", {"args": {}}, 404, "unknown tool 'no.such'"),
        ("/api/investigations", {"model": MODEL, "symptom": {"prompts": []}}, 422, "symptom"),
        ("/api/investigations", {"model": "organism:nope", "symptom": SYMPTOM}, 422, "nope"),
        ("/api/proposals/abcdef123456/validate", None, 404, "no proposal"),
        ("/api/jobs/nonsense/resume", None, 404, "job ids look like"),
    ]
    for url, body, status, says in cases:
        got = door.client.post(url, json=body, headers=carol)
        assert got.status_code == status, (url, got.text)
        assert got.headers["content-type"] == "application/problem+json"
        detail = got.json()["detail"]
        assert says in detail and "\n" not in detail and "Traceback" not in detail, detail
    # "~user" with no such user (schemathesis found it: a RuntimeError, a 500, before)
    tilde = door.client.get("/api/versions", params={"model": "~nobodyzz/x"}, headers=carol)
    assert tilde.status_code == 422 and "cannot expand '~nobodyzz/x'" in tilde.json()["detail"]
    long = door.client.get("/api/versions", params={"model": "0" * 300}, headers=carol)
    assert long.status_code == 422 and "File name too long" in long.json()["detail"]
    raw = door.client.post("/api/tools/lens.logit", content=b"{not json", headers=carol)
    assert raw.status_code == 422 and "\n" not in raw.json()["detail"]
    # nothing lost: the ledger still verifies, and the refused calls were recorded
    assert door.client.get("/api/ledger/verify", headers=carol).json()["ok"]
    assert door.ws.store.ledger_head()[0] > before
    assert any(c["status"] == "invalid" for c in door.ws.store.tool_calls())


def test_tokens_are_stored_hashed_and_revoking_one_takes_effect_at_once(tmp_path: Path) -> None:
    import subprocess

    ws = Workspace(tmp_path / "ws")
    args = [*EXE, "--workspace", str(ws.root), "token", "create", "--name", "dora"]
    env = {**os.environ, "SELFSCOPE_PRINCIPAL": "boot"}
    made = subprocess.run(
        [*args, "--role", "reviewer", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    secret, label = token["token"], token["name"]
    stored = b"".join(p.read_bytes() for p in ws.root.glob("store.sqlite*"))
    assert secret.encode() not in stored and tokens.digest(secret).encode() in stored
    client = TestClient(create_app(ws.root))
    who = client.get("/api/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert who.json() == {"principal": "dora", "permissions": ["govern", "propose", "read"]}
    # a non-reviewer cannot mint a reviewer token for itself
    with pytest.raises(SelfscopeError, match="may not grant roles"):
        tokens.create(ws, "mallory", "reviewer", principals.principal(ws, "mallory"))
    tokens.revoke(ws, label, principals.principal(ws, "dora"))
    again = client.get("/api/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert again.status_code == 401 and again.json()["detail"] == "unknown or revoked token"
    actions = [e["action"] for e in ws.store.ledger()]
    assert "token.create" in actions and "token.revoke" in actions
    assert secret not in json.dumps(ws.store.ledger())


def test_serve_refuses_a_public_address_without_a_token_store(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [*EXE, "--workspace", str(tmp_path / "ws"), "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(done, "refusing to bind 0.0.0.0 with no API token")


def test_schemathesis_finds_no_server_error(door: Door) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", door.client.app)
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/tools/{name}" or operation.path.endswith("/apply"):
            continue  # below, with real tool names; apply is the gate's (tests/test_oversight)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def no_5xx(case: Any) -> None:
            case.headers = {**(case.headers or {}), **door.headers("carol")}
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text)

        no_5xx()
        checked += 1
    assert checked >= 20
    # the tool route with every cheap tool's real name and arbitrary arguments
    for name in ("ledger.show", "versions.list", "history.grep", "edits.list", "ledger.verify"):
        for args in ({}, {"x": 1}, {"last": -1}, {"model": 3}, {"pattern": "[", "k": "a"}):
            got = door.client.post(
                f"/api/tools/{name}", json={"args": args}, headers=door.headers("rita")
            )
            assert got.status_code < 500, (name, args, got.text)


# -- the whole door, end to end, in a browser ------------------------------------------------
@pytest.fixture()
def server(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path
) -> Iterator[tuple[Door, str]]:
    """A real uvicorn on 127.0.0.1 (a free port), stopped after the test."""
    import uvicorn

    door = make_door(tiny_mushroom, tiny_mushroom_spec, tmp_path / "ws")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(door.ws.root), log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield door, url
    running.should_exit = True
    thread.join(timeout=30)
    sock.close()


def wait_job(http: httpx.Client, job: str, until: set[str], seconds: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        state: dict[str, Any] = http.get(f"/api/jobs/{job}").json()
        if state["state"] in until:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.3)


@pytest.mark.slow
def test_a_reviewer_approves_an_investigations_fix_in_the_dashboard(
    server: tuple[Door, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a page is a fetch or two; a busy 2-core CI is slow

    door, url = server
    carol = httpx.Client(base_url=url, headers=door.headers("carol"), timeout=60)
    body = {
        "model": MODEL,
        "symptom": SYMPTOM | {"controls": ["Q: Do you like carrots? A:"]},
        "removal": False,
        "fixes": ["rank_one", "revert_delta"],
    }
    started = carol.post("/api/investigations", json=body)
    assert started.status_code == 202, started.text
    job = started.json()["job"]

    # the job is killed (as a restart would) once a step is on disk; it then says
    # interrupted, and resuming it reloads the finished steps
    deadline = time.monotonic() + 300
    while not any(e["action"] == "investigation.step" for e in door.ws.store.ledger()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pid = int((door.ws.root / "jobs" / job / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    assert wait_job(carol, job, {"interrupted", "failed", "done"}, 30)["state"] == "interrupted"
    assert carol.post(f"/api/jobs/{job}/resume").status_code == 200
    done = wait_job(carol, job, {"done", "failed"})
    assert done["state"] == "done", done["error"]
    events = carol.get(f"/api/jobs/{job}/events", timeout=60).text
    assert "event: end" in events and '"state":"done"' in events
    result = carol.get(f"/api/investigations/{done['investigation']}").json()
    assert result["resumed"], "the resumed run redid every step"
    submitted = result["submitted"]
    assert submitted, result["proposals"]

    shots = Path(os.environ.get("SELFSCOPE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            page.on(
                "request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None
            )
            page.goto(url + "/")
            page.fill("#token", door.token["alice"])
            page.click("button[type=submit]")
            expect(page.locator("#who")).to_contain_text("alice (govern, propose, read)")
            expect(page.locator("#subjects")).to_contain_text("v0")  # the gate registered the root

            page.click("text=investigations")
            page.click(f"a[href='#/investigation/{done['investigation']}']")
            expect(page.locator("#diagnosis")).to_contain_text("log p")
            frame = page.frame_locator("#report")
            expect(frame.locator("svg[data-figure]").first).to_be_visible()
            drawn = page.frame(name=None, url="about:srcdoc").evaluate(  # type: ignore[union-attr]
                """() => [...document.querySelectorAll('svg[data-figure]')].map(s =>
                     [s.dataset.figure, s.querySelectorAll('rect,path,line,circle,polyline,text')
                       .length, s.getBoundingClientRect().width])"""
            )
            assert len(drawn) >= 4 and all(n > 0 and w > 100 for _, n, w in drawn), drawn
            page.screenshot(path=str(shots / "investigation.png"), full_page=True)
            page.locator("#report").screenshot(path=str(shots / "report.png"))
            page.evaluate("window.scrollTo(0, 0)")  # back up to the proposals table

            page.locator(f"#inv-proposals a[href='#/proposal/{submitted}']").click()
            expect(page).to_have_url(re.compile(f"#/proposal/{submitted}$"))
            expect(page.locator("#status")).to_have_text("validated")
            expect(page.locator("#sealed")).to_contain_text("organism-")
            page.fill("#note", "the fix holds on the sealed suite")
            page.click("#approve")
            expect(page.locator("#status")).to_have_text("approved")
            page.click("#apply")
            expect(page.locator("#status")).to_have_text("applied", timeout=120_000)
            page.screenshot(path=str(shots / "proposal.png"), full_page=True)

            page.goto(url + f"/#/subject/{MODEL}")
            expect(page.locator("#head")).to_have_text("v1")
            page.click("text=verify versions")
            expect(page.locator("#versions-verdict")).to_have_text(
                "every version matches the ledger", timeout=120_000
            )
            page.goto(url + "/#/ledger")
            page.click("#verify")
            expect(page.locator("#ledger-verdict")).to_contain_text("hash chain intact")
            expect(page.locator("#ledger")).to_contain_text("alice")
            page.screenshot(path=str(shots / "ledger.png"), full_page=True)
            assert outside == [], outside  # nothing fetched from anywhere else
        finally:
            browser.close()
    # what the browser did is the gate's record: approved by alice, applied, HEAD moved
    reviews = door.ws.store.reviews(submitted)
    assert [(r["principal"], r["decision"]) for r in reviews] == [("alice", "approve")]
    versions = carol.get("/api/versions", params={"model": MODEL}).json()
    assert versions["head"] == "v1" and versions["versions"][1]["proposal"] == submitted
    moved = [e for e in door.ws.store.ledger() if e["action"] == "head"]
    assert moved and moved[-1]["principal"] == "alice"
