"""One description of a service's keys: spec_services.SERVICE_SCHEMA.

The spec accepts exactly its keys (and refuses the retired ones by name), and Pulumi.yaml's comment
block, which users read beside `pulumi config`, lists exactly them, each with its description. After
changing the table, rewrite the block with:

    venv/bin/python -m tests.test_service_schema
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from components.spec import RETIRED_SERVICE_KEYS, SERVICE_KEYS, SERVICE_SCHEMA, MeshSpecError, load_service

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILE = ROOT / "Pulumi.yaml"
# The services entry of Pulumi.yaml's comment block: its keys follow these lines, up to the next entry.
BLOCK_START = "#                digits, '-', starting with a letter, at most 63 characters): <name>.virtual.consul.\n"
BLOCK_END = "#   intentions:"
INDENT = "#                  "
DESCRIPTION_COLUMN = 52
WIDTH = 120


def schema_lines() -> list[str]:
    """The block's lines for SERVICE_SCHEMA: `key: value`, then the description, wrapped in its column."""
    lines = []
    for key, entry in SERVICE_SCHEMA.items():
        head = f"{INDENT}{key}: {entry.value}".ljust(DESCRIPTION_COLUMN - 1)
        wrapped = textwrap.wrap(entry.description, WIDTH - DESCRIPTION_COLUMN)
        lines.append(f"{head} {wrapped[0]}\n")
        lines += [f"#{' ' * (DESCRIPTION_COLUMN - 1)}{more}\n" for more in wrapped[1:]]
    return lines


def project_file_block(text: str) -> tuple[int, int]:
    """Where the service keys are listed in Pulumi.yaml: (start, end) offsets."""
    assert text.count(BLOCK_START) == 1, "Pulumi.yaml's services entry moved: update BLOCK_START"
    start = text.index(BLOCK_START) + len(BLOCK_START)
    return start, text.index(BLOCK_END, start)


def test_pulumi_yaml_lists_exactly_the_service_keys_with_their_descriptions() -> None:
    text = PROJECT_FILE.read_text()
    start, end = project_file_block(text)
    expected = "".join(schema_lines())
    assert text[start:end] == expected, (
        "Pulumi.yaml's service keys differ from SERVICE_SCHEMA (rewrite: venv/bin/python -m "
        f"tests.test_service_schema); expected:\n{expected}"
    )


def test_the_block_names_no_retired_key() -> None:
    text = PROJECT_FILE.read_text()
    for retired in RETIRED_SERVICE_KEYS:
        assert f"{retired}:" not in text


def test_the_spec_accepts_exactly_the_schemas_keys() -> None:
    assert frozenset(SERVICE_SCHEMA) | frozenset(RETIRED_SERVICE_KEYS) == SERVICE_KEYS
    with pytest.raises(MeshSpecError) as err:
        load_service("web", {"port": 9090, "portt": 1})
    assert "services.web.portt: 1 is not a known key (did you mean 'port'?)" in str(err.value)


@pytest.mark.parametrize("retired", sorted(RETIRED_SERVICE_KEYS))
def test_a_retired_key_is_refused_with_its_reason(retired: str) -> None:
    with pytest.raises(MeshSpecError) as err:
        load_service("web", {"port": 9090, retired: "x"})
    assert err.value.problems == [f'services.web.{retired}: "x" {RETIRED_SERVICE_KEYS[retired]}']


def test_every_description_is_one_line() -> None:
    for key, entry in SERVICE_SCHEMA.items():
        assert entry.description and "\n" not in entry.description, key
        assert entry.value and "\n" not in entry.value, key


def rewrite() -> None:
    """Write SERVICE_SCHEMA's lines into Pulumi.yaml's comment block."""
    text = PROJECT_FILE.read_text()
    start, end = project_file_block(text)
    PROJECT_FILE.write_text(text[:start] + "".join(schema_lines()) + text[end:])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    rewrite()
