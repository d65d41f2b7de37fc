"""The OpenAPI document tells the truth: schemathesis fuzzes every documented route against a real
server and fails on any server error or any answer the document does not describe (status,
content type, body schema, headers, SSE events, Allow). Plus the docs page, served offline.

The budget here keeps the suite fast; the closing note's run (>= 2000 cases, with and without an
API key) is `python tests/server/test_openapi.py --cases 2000`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "allow_header_conformance", "unsupported_method", "missing_required_header",
    "ignored_auth",
])
SCHEMATHESIS = Path(sys.executable).with_name("st")


def run_schemathesis(url: str, api_key: str | None, max_examples: int, cwd: Path,
                     phases: str = "examples,coverage,fuzzing") -> tuple[int, str]:
    """`st run` over the server's /openapi.json; (exit code, output). /events never ends: left out."""
    command = [
        str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS,
        "--phases", phases, "--max-examples", str(max_examples),
        "--exclude-path-regex", "^(/v1)?/events$", "--request-timeout", "30",
        "--generation-database", "none", "--no-color", "--seed", "20261202",
    ]
    if api_key:
        command += ["--header", f"Authorization: Bearer {api_key}"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    return result.returncode, result.stdout + result.stderr


def cases_from(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    return int(match.group(1)) if match else 0


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(start_server, tmp_path, monkeypatch):
    """With an API key (its 401s are checked too), the seeds' examples and a few fuzzed cases per
    operation: about 150 cases, 20 s. The coverage phase's thousand runs in the closing note's run."""
    # Fuzzed local model paths are relative to the working directory: keep them in a temporary one.
    monkeypatch.chdir(tmp_path)
    server = start_server(api_key="k3y-openapi", allow_private_urls=False, max_retries=0)
    code, output = run_schemathesis(server.url, "k3y-openapi", max_examples=4, cwd=tmp_path, phases="examples,fuzzing")
    assert code == 0, output[-6000:]
    assert cases_from(output) > 100, output[-2000:]


def test_the_document_describes_streams_aliases_and_errors(shared_server):
    document = shared_server.client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/downloads/{model_id}/events", "/api/models/download", "/events"):
        for alias in (path, "/v1" + path):
            ok = paths[alias]["get"]["responses"]["200"]["content"]
            assert list(ok) == ["text/event-stream"]
    engines = paths["/engines"]["post"]["responses"]
    assert {"201", "202", "400", "409", "413", "422"} <= set(engines)
    assert engines["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert paths["/engines"]["post"]["requestBody"]["content"]["application/json"]["example"]["engine_id"] == "qwen-model"
    assert document["components"]["schemas"]["DownloadProgress"]["example"]["timing"]["estimated_remaining_seconds"] == 90
    assert {"/status", "/v1/status", "/models", "/v1/models/{engine_id}", "/health", "/v1/health"} <= set(paths)


def test_docs_are_served_offline_and_behind_the_api_key(start_server):
    server = start_server(api_key="k3y-docs")
    anonymous = httpx.Client(base_url=server.url, timeout=10)
    page = anonymous.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text.split("<body>")[0]
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text)
    assert len(assets) >= 2
    for asset in assets:
        assert anonymous.get(asset).status_code == 200, asset
    document = anonymous.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert anonymous.get("/downloads").status_code == 401  # the API itself still wants the key
    anonymous.close()


def main() -> None:
    """The closing note's run: a server per key setting, `--cases` examples per operation."""
    import argparse
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import RunningServer

    from modelpull._settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=2000, help="total cases wanted per run (at least)")
    args = parser.parse_args()
    for api_key in (None, "k3y-openapi"):
        root = Path(tempfile.mkdtemp())
        os.chdir(root)
        server = RunningServer(Settings(home=root / "models", database=root / "state.db", api_key=api_key,
                                        max_retries=0)).start()
        try:
            per_operation = max(1, args.cases // 40)
            code, output = run_schemathesis(server.url, api_key, per_operation, root)
        finally:
            server.stop()
        summary = output[output.find("SUMMARY"):] if "SUMMARY" in output else output[-3000:]
        print(json.dumps({"api_key": bool(api_key), "exit_code": code, "cases": cases_from(output)}))
        print(summary)


if __name__ == "__main__":
    main()
