"""docker-compose.yml and the Dockerfile stay true to the code.

There is no Docker engine on the machines that run these tests, so the file
is checked by reading it: every thelca service runs a real subcommand, and
every THELCA_* variable it sets is one the code reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from thelca.cli.main import build_parser
from thelca.settings import OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _thelca_services() -> dict[str, Any]:
    return {name: service for name, service in _compose()["services"].items()
            if service.get("build") == "."}


def test_compose_runs_worker_logger_replay_and_rabbitmq_with_management() -> None:
    services = _compose()["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert "127.0.0.1:15672:15672" in services["rabbitmq"]["ports"]


def test_every_published_port_is_on_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every host"
    commands = sorted(service["command"][0] for service in _thelca_services().values())
    assert commands == ["logger", "replay", "worker"]


def test_every_thelca_service_runs_a_real_subcommand() -> None:
    parser = build_parser()
    for name, service in _thelca_services().items():
        args = parser.parse_args(service["command"])
        assert getattr(args, "func", None) is not None, f"{name}: not a thelca subcommand"


def test_every_variable_compose_sets_is_one_the_code_reads() -> None:
    known = {option.env for option in OPTIONS.values()}
    for name, service in _thelca_services().items():
        for variable in service["environment"]:
            assert variable in known, f"{name} sets {variable}, which thelca never reads"
        assert service["environment"]["THELCA_AUTHORITY"], f"{name}: no Authority chosen"


def test_every_thelca_service_has_a_health_check_that_is_a_real_subcommand() -> None:
    parser = build_parser()
    for name, service in _thelca_services().items():
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "thelca"], f"{name}: health check is not thelca"
        assert getattr(parser.parse_args(test[2:]), "func", None), f"{name}: {test}"


def test_postgres_is_there_under_a_profile_with_a_store_url_the_workers_can_take() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    user = postgres["environment"]["POSTGRES_USER"]
    assert f"postgresql://{user}:" in (ROOT / "docker-compose.yml").read_text()


def test_compose_waits_for_a_healthy_broker() -> None:
    for service in _thelca_services().values():
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert _compose()["services"]["rabbitmq"]["healthcheck"]["test"]


def test_the_dockerfile_installs_the_project_and_runs_thelca() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*\.", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["thelca"]' in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.MULTILINE), "runs as root"


def test_the_worker_waits_for_a_healthy_postgres_only_under_its_profile() -> None:
    services = _compose()["services"]
    postgres = services["worker"]["depends_on"]["postgres"]
    assert postgres["condition"] == "service_healthy"
    assert postgres["required"] is False  # no postgres profile: nothing to wait for
    assert services["postgres"]["healthcheck"]["test"]
    assert services["worker"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_the_logger_and_replay_health_checks_do_not_depend_on_a_worker() -> None:
    services = _compose()["services"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "thelca", "health"]
    parser = build_parser()
    for role in ("logger", "replay"):
        test = services[role]["healthcheck"]["test"]
        assert parser.parse_args(test[2:]).role == role, f"{role}: {test}"
        assert services[role]["healthcheck"]["interval"]


def test_a_jwks_file_can_be_mounted_where_the_comment_says() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in _thelca_services().items():
        # SOURCE:TARGET[:MODE], where SOURCE may be ${VARIABLE:-default}
        targets = [re.sub(r"\$\{[^}]*\}", "source", str(volume)).split(":")[1]
                   for volume in service["volumes"]]
        assert "/run/thelca/jwks.json" in targets, f"{name} has no JWKS file mount"
    assert "THELCA_JWKS=/run/thelca/jwks.json" in text
